#!/usr/bin/python3
"""The inside half of bench/switch_bench.py: runs in the test machine, next to the app.

Puts wrk (with reqlog.lua: one line per request) on URL at saturation in the background,
then, after a warm-up, does COUNT deploys with PAUSE seconds of plain load before each and
after the last, and stops wrk. A deploy is either

  --mode switch:  bloomctl switch APP VERSION --json   (versions alternate, or --sequence)
  --mode restart: point /opt/plain/current at the other release, systemctl restart UNIT

Every deploy's window is the wall time of that command, taken with time.time() (the same
clock as reqlog.lua's timestamps). For switches, the agent's own record of each step (its
start time, from the state database) is added. After the measured period, with the load still
on, it times the client alone (bloomctl --version, bloomctl status) --client-samples times.
Writes OUT (JSON) and leaves wrk's logs in LOG_DIR. Standard library only (Debian's python3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (host-wide: nspawn does not
    virtualise it)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])       # guest time is already in user
    return total - idle, total


def served_version(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.headers.get("X-Release", "")
    except OSError as e:
        return f"error: {e}"


def show(unit: str, *props: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)],
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def current_version(args) -> str:
    if args.mode == "switch":
        out = subprocess.run(["bloomctl", "status", args.app, "--json"], capture_output=True, text=True).stdout
        return json.loads(out)["current"]
    return Path(os.readlink(Path(args.plain_root) / "current")).name


def deploy_switch(args, version: str) -> dict:
    cmd = ["bloomctl", "switch", args.app, version, "--json"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.time()
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = None
    return {"t0": t0, "t1": t1, "rc": proc.returncode, "result": result,
            "stderr": proc.stderr[-2000:]}


def add_agent_times(args, events: list[dict]) -> None:
    """The agent's own start and end of each switch (bloomctl history, millisecond timestamps)."""
    out = subprocess.run(["bloomctl", "history", args.app, "--json", "--limit", str(len(events) + 10)],
                         capture_output=True, text=True).stdout
    try:
        rows = {r.get("id"): r for r in json.loads(out)}
    except ValueError:
        return
    for e in events:
        row = rows.get((e.get("result") or {}).get("deployment"))
        if row and row.get("started_at") and row.get("finished_at"):
            e["agent_started"] = datetime.fromisoformat(row["started_at"]).timestamp()
            e["agent_finished"] = datetime.fromisoformat(row["finished_at"]).timestamp()


def add_agent_steps(events: list[dict], db: str = "/var/lib/bloom/state.db") -> None:
    """Each switch's steps as the agent recorded them before taking them: [[time, step], ...]
    (millisecond timestamps; the last one is the outcome, written when the switch ended)."""
    ids = [(e.get("result") or {}).get("deployment") for e in events]
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return
    try:
        for e, dep in zip(events, ids):
            if dep is None:
                continue
            rows = conn.execute("SELECT at, step FROM deployment_steps WHERE deployment = ? ORDER BY rowid",
                                (dep,)).fetchall()
            e["steps"] = [[datetime.fromisoformat(at).timestamp(), step] for at, step in rows]
    finally:
        conn.close()


def agent_memory() -> dict | None:
    """The agent's resident memory now (kB), to see whether it grows over many switches."""
    pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "bloom-agent"], capture_output=True,
                         text=True).stdout.strip()
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM") if k in fields}


def time_client(args, n: int) -> dict:
    """Wall times of the client alone: its start-up (--version: Python, click, the package's
    imports) and a round trip to the agent (status)."""
    out = {}
    for name, cmd in (("version", ["bloomctl", "--version"]),
                      ("status", ["bloomctl", "status", args.app, "--json"])):
        samples = []
        for _ in range(n):
            t0 = time.time()
            subprocess.run(cmd, capture_output=True)
            samples.append(time.time() - t0)
            time.sleep(0.2)
        out[name] = samples
    return out


def deploy_restart(args, version: str) -> dict:
    link = Path(args.plain_root) / "current"
    tmp = link.with_name(".current.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"releases/{version}")
    t0 = time.time()
    os.replace(tmp, link)
    proc = subprocess.run(["systemctl", "restart", args.unit], capture_output=True, text=True)
    t1 = time.time()
    # this restart's stop and start, from systemd's own (monotonic, microsecond) timestamps
    p = {k: int(v or 0) for k, v in show(args.unit, "ActiveExitTimestampMonotonic",
                                         "InactiveEnterTimestampMonotonic",
                                         "InactiveExitTimestampMonotonic",
                                         "ActiveEnterTimestampMonotonic").items()}
    split = {
        "stopping": (p["InactiveEnterTimestampMonotonic"] - p["ActiveExitTimestampMonotonic"]) / 1e6,
        "starting": (p["ActiveEnterTimestampMonotonic"] - p["InactiveExitTimestampMonotonic"]) / 1e6,
    }
    return {"t0": t0, "t1": t1, "rc": proc.returncode, "result": {"timings": split},
            "stderr": proc.stderr[-2000:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("switch", "restart"), required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--versions", required=True, help="comma-separated; deploys cycle through them")
    ap.add_argument("--sequence", help="switch mode: comma-separated versions to switch to, in this order "
                                        "(instead of cycling through --versions)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--pause", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--timeout", default="5s", help="wrk --timeout")
    ap.add_argument("--no-load", action="store_true", help="no wrk: deploys on an idle machine")
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--app", default="web")
    ap.add_argument("--unit", default="plain.service")
    ap.add_argument("--plain-root", default="/opt/plain")
    ap.add_argument("--client-samples", type=int, default=0,
                    help="after the measured period, time bloomctl --version and status this many times each")
    args = ap.parse_args(argv)

    if args.sequence:
        sequence = args.sequence.split(",")
        args.count = len(sequence)
    else:
        versions = args.versions.split(",")
        first = versions.index(current_version(args))
        sequence = [versions[(first + i + 1) % len(versions)] for i in range(args.count)]
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*"):
        old.unlink()
    deploy = deploy_switch if args.mode == "switch" else deploy_restart

    env = dict(os.environ, BENCH_LOG_DIR=str(log_dir))
    wrk_cmd = ["wrk", "-t", str(args.connections), "-c", str(args.connections), "-d", "3600s",
               "--timeout", args.timeout, "-s", str(HERE / "reqlog.lua"), args.url]
    wrk_out = open(log_dir / "wrk.out", "w")
    if args.no_load:
        wrk = subprocess.Popen(["true"])
    else:
        wrk = subprocess.Popen(wrk_cmd, stdout=wrk_out, stderr=subprocess.STDOUT, env=env)
    events = []
    memory0 = agent_memory() if args.mode == "switch" else None
    loadavg0 = Path("/proc/loadavg").read_text().split()[:3]
    try:
        time.sleep(args.warmup)
        if wrk.poll() is not None and not args.no_load:
            raise SystemExit(f"wrk exited early:\n{(log_dir / 'wrk.out').read_text()}")
        cpu0 = cpu_ticks()
        measure_start = time.time()
        for i in range(args.count):
            time.sleep(args.pause)
            version = sequence[i]
            event = deploy(args, version)
            event.update(n=i + 1, version=version, served=served_version(args.url))
            events.append(event)
            print(f"{args.mode} {i + 1}/{args.count} -> {version}: rc {event['rc']}, "
                  f"{event['t1'] - event['t0']:.3f} s", file=sys.stderr, flush=True)
        time.sleep(args.pause)
        measure_end = time.time()
        cpu1 = cpu_ticks()
        client = time_client(args, args.client_samples) if args.client_samples and args.mode == "switch" else None
    finally:
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)  # wrk stops, prints its summary and runs done()
            try:
                wrk.wait(30)
            except subprocess.TimeoutExpired:
                wrk.kill()
                wrk.wait()
        wrk_out.close()
    if args.mode == "switch":
        add_agent_times(args, events)
        add_agent_steps(events)
    busy, total = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    summary_file = log_dir / "summary.json"
    report = {
        "mode": args.mode,
        "load": not args.no_load,
        "loadavg": [loadavg0, Path("/proc/loadavg").read_text().split()[:3]],
        "wrk_command": wrk_cmd,
        "wrk_rc": wrk.returncode,
        "wrk_summary": json.loads(summary_file.read_text()) if summary_file.exists() else None,
        "wrk_output": (log_dir / "wrk.out").read_text(),
        "measure_start": measure_start,
        "measure_end": measure_end,
        "cpu_busy": busy / total if total else None,
        "events": events,
        "client_sec": client,
        "agent_memory_kb": [memory0, agent_memory() if args.mode == "switch" else None],
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
