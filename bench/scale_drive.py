#!/usr/bin/python3
"""The inside half of bench/scale_bench.py: runs in the test machine, next to the agent.

A toolbox of measurements, one subcommand each, each printing one JSON document on stdout. They
drive the agent only from outside: ``bloomctl ... --json``, /proc, ``busctl`` and the state
database opened read-only. Nothing here imports the agent's package or talks D-Bus to it, so the
same script measures the agent whatever its D-Bus side is made of.

    sample                          the agent's process, its D-Bus matches, the state database
    idle --sec S                    the agent's CPU over S seconds with nothing happening
    status --count K --app APP      bloomctl --version, status, status APP: wall times
    switch APP=VERSION ...          those switches at once (one bloomctl each); their records
    journal APP=VERSION ...         switch all at once; once all are in probation, CPU over a window
    longrun ...                     rounds of switches and rollbacks across apps, sampled as it goes

Standard library only (Debian's python3).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
DB = "/var/lib/bloom/state.db"
METRICS_DIR = "/var/lib/prometheus/node-exporter"  # the agent's default metrics_dir


def say(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def main_pid(unit: str) -> int:
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit], capture_output=True, text=True)
    return int(out.stdout.strip() or 0)


def proc_sample(pid: int) -> dict:
    """CPU seconds, memory, open descriptors and threads of one process, from /proc."""
    base = Path(f"/proc/{pid}")
    stat = (base / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    status = dict(line.split(":", 1) for line in (base / "status").read_text().splitlines() if ":" in line)

    def kb(key: str) -> int | None:
        return int(status[key].split()[0]) if key in status else None

    kinds: dict[str, int] = {}  # what the descriptors are: a journal file or inotify means a journal reader
    for fd in os.listdir(base / "fd"):
        try:
            target = os.readlink(base / "fd" / fd)
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target else ("journal" if "/journal/" in target else target)
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"t": time.time(), "pid": pid, "cpu_sec": (int(fields[11]) + int(fields[12])) / TICK,
            "rss_kb": kb("VmRSS"), "rss_anon_kb": kb("RssAnon"), "rss_file_kb": kb("RssFile"),
            "hwm_kb": kb("VmHWM"), "fds": sum(kinds.values()), "fd_kinds": kinds,
            "threads": len(os.listdir(base / "task"))}


def busctl_json(*args: str):
    out = subprocess.run(["busctl", "--system", "--json=short", *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[:300]}
    return json.loads(out.stdout)


def dbus_matches(pid: int) -> dict:
    """The agent's connections to the system bus and the match rules dbus-daemon holds for each
    (org.freedesktop.DBus.Debug.Stats: Matches, MatchBytes)."""
    listed = busctl_json("list")
    if isinstance(listed, dict):
        return listed
    names = [row["name"] for row in listed if row.get("pid") == pid and row["name"].startswith(":")]
    conns = {}
    for name in names:
        stats = busctl_json("call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.Debug.Stats",
                            "GetConnectionStats", "s", name)
        if "error" in stats:
            conns[name] = stats
            continue
        values = stats["data"][0]
        # dbus-daemon 1.14 names them MatchRules and PeakMatchRules
        conns[name] = {k: values[k]["data"] for k in ("MatchRules", "PeakMatchRules", "BusNames") if k in values}
    bus = busctl_json("call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus.Debug.Stats",
                      "GetStats")
    bus_rules = bus["data"][0].get("MatchRules", {}).get("data") if "data" in bus else None
    return {"connections": conns, "matches": sum(c.get("MatchRules", 0) for c in conns.values()),
            "peak_matches": sum(c.get("PeakMatchRules", 0) for c in conns.values()), "bus_matches": bus_rules}


def db_facts() -> dict:
    sizes = {name: (Path(DB + suffix).stat().st_size if Path(DB + suffix).exists() else 0)
             for name, suffix in (("db", ""), ("wal", "-wal"))}
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=10)
    try:
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("deployments", "deployment_steps", "releases", "agent_events")}
        pages = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return {"bytes": sizes["db"], "wal_bytes": sizes["wal"], "page_bytes": pages, "rows": rows}


def sample() -> dict:
    pid = main_pid("bloom-agent")
    return {"agent": proc_sample(pid), "dbus": dbus_matches(pid), "db": db_facts(), "loop": loop_report()}


def bloomctl(*args: str, timeout: float = 600) -> tuple[int, object, float]:
    t0 = time.time()
    proc = subprocess.run(["bloomctl", *args], capture_output=True, text=True, timeout=timeout)
    took = time.time() - t0
    try:
        return proc.returncode, json.loads(proc.stdout), took
    except ValueError:
        return proc.returncode, {"stdout": proc.stdout[-500:], "stderr": proc.stderr[-1000:]}, took


def loop_report() -> dict | None:
    rc, status, _ = bloomctl("status", "--json")
    return (status.get("agent") or {}).get("loop") if isinstance(status, dict) else None


# ------------------------------------------------------------------------------ subcommands


def cmd_idle(args) -> dict:
    """CPU over the window; and the loop's passes (its probe, read before and after), which say how
    often something woke the agent."""
    pid = main_pid("bloom-agent")
    metrics = Path(METRICS_DIR)
    removed = None
    if args.without_metrics and metrics.is_dir():
        # The agent writes its textfile only where the directory exists: this window is without it.
        # Removed and made again (a rename of a directory of the machine's lower layer fails on overlayfs).
        st = metrics.stat()
        removed = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
        for entry in metrics.iterdir():
            entry.unlink()
        metrics.rmdir()
    try:
        loop0 = loop_report()
        first = proc_sample(pid)
        time.sleep(args.sec)
        last = proc_sample(pid)
        loop1 = loop_report()
    finally:
        if removed:
            metrics.mkdir()
            os.chmod(metrics, removed[0])
            os.chown(metrics, removed[1], removed[2])
    passes = loop1["iterations"] - loop0["iterations"] if loop0 and loop1 else None
    return {"before": first, "after": last, "loop_passes": passes, "metrics_dir": not args.without_metrics}


# Round trips to the agent alone, without bloomctl's start-up (Python, click): the client library
# that bloomctl uses, imported once; the wire protocol, not the agent's D-Bus side.
ROUND_TRIPS = """
import json, sys, time
from bloom_agent.control import client
out = {}
for name, args in (("status_all", {}), ("status_app", {"app": sys.argv[2]})):
    times = []
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter()
        client.call("status", args)
        times.append(time.perf_counter() - t0)
        time.sleep(0.1)
    out[name] = times
print(json.dumps(out))
"""


def cmd_status(args) -> dict:
    proc = subprocess.run(["/usr/bin/python3", "-c", ROUND_TRIPS, str(args.count), args.app], capture_output=True,
                          text=True)
    out = {"round_trip": json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-500:]}}
    for name, cmd in (("version", ["--version"]), ("status_all", ["status", "--json"]),
                      ("status_app", ["status", args.app, "--json"])):
        times = []
        for _ in range(args.count):
            t0 = time.time()
            subprocess.run(["bloomctl", *cmd], capture_output=True)
            times.append(time.time() - t0)
            time.sleep(0.2)
        out[name] = times
    return out


def deployment_records(ids: list[int]) -> dict[int, dict]:
    """Each deployment's row and its step records ([unix time, step], the last being the outcome)."""
    from datetime import datetime
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30)
    out = {}
    try:
        for dep in ids:
            row = conn.execute("SELECT app, action, version, from_version, outcome, reason, started_at, finished_at "
                               "FROM deployments WHERE id = ?", (dep,)).fetchone()
            if row is None:
                continue
            steps = conn.execute("SELECT at, step FROM deployment_steps WHERE deployment = ? ORDER BY rowid",
                                 (dep,)).fetchall()
            keys = ("app", "action", "version", "from_version", "outcome", "reason", "started_at", "finished_at")
            rec = dict(zip(keys, row))
            for key in ("started_at", "finished_at"):
                rec[key] = datetime.fromisoformat(rec[key]).timestamp() if rec[key] else None
            rec["steps"] = [[datetime.fromisoformat(at).timestamp(), step] for at, step in steps]
            out[dep] = rec
    finally:
        conn.close()
    return out


def switch_all(targets: list[tuple[str, str]], extra: tuple[str, ...] = ()) -> list[dict]:
    """One bloomctl switch per (app, version), all at once; each one's wall time, result and records."""
    procs = []
    for app, version in targets:
        procs.append((app, version, time.time(),
                      subprocess.Popen(["bloomctl", "switch", app, version, "--json", *extra],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    events = []
    for app, version, t0, proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        t1 = time.time()
        try:
            result = json.loads(stdout)
        except ValueError:
            result = None
        events.append({"app": app, "version": version, "t0": t0, "t1": t1, "rc": proc.returncode, "result": result,
                       "stderr": stderr[-1000:]})
    records = deployment_records([e["result"]["deployment"] for e in events
                                  if isinstance(e["result"], dict) and "deployment" in e["result"]])
    for e in events:
        dep = (e["result"] or {}).get("deployment") if isinstance(e["result"], dict) else None
        if dep in records:
            e["record"] = records[dep]
    return events


def cmd_switch(args) -> dict:
    targets = [tuple(t.split("=", 1)) for t in args.targets]
    return {"events": switch_all(targets)}


def latest_deployment() -> int:
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT coalesce(max(id), 0) FROM deployments").fetchone()[0]
    finally:
        conn.close()


def steps_since(first_id: int) -> dict[str, list[str]]:
    """The step names recorded so far for each app's deployments with an id above first_id."""
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT d.app, s.step FROM deployment_steps s JOIN deployments d ON d.id = s.deployment "
                            "WHERE d.id > ? ORDER BY s.rowid", (first_id,)).fetchall()
    finally:
        conn.close()
    out: dict[str, list[str]] = {}
    for app, step in rows:
        out.setdefault(app, []).append(step)
    return out


def journald_pid() -> int:
    return main_pid("systemd-journald")


def cmd_journal(args) -> dict:
    """Every app switched at once to a release that logs; once all are in probation (and none has
    left it), the agent's and journald's CPU over --window seconds, and the lines journald stored."""
    targets = [tuple(t.split("=", 1)) for t in args.targets]
    apps = [app for app, _ in targets]
    before = latest_deployment()
    agent, journald = main_pid("bloom-agent"), journald_pid()
    procs = [subprocess.Popen(["bloomctl", "switch", app, version, "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for app, version in targets]
    began = time.time()
    window = None
    deadline = began + args.timeout
    while time.time() < deadline:
        steps = steps_since(before)
        if all("probation" in steps.get(app, ()) for app in apps):
            if any(steps[app][-1] != "probation" for app in apps):
                break  # one already left probation: no common window
            a0, j0 = proc_sample(agent), proc_sample(journald)
            end = time.time() + args.window
            while time.time() < end:
                time.sleep(0.25)
                steps = steps_since(before)
                if any(steps[app][-1] != "probation" for app in apps):
                    break
            a1, j1 = proc_sample(agent), proc_sample(journald)
            window = {"agent": [a0, a1], "journald": [j0, j1]}
            break
        time.sleep(0.2)
    all_in_probation_after = time.time() - began
    results = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=900)
        try:
            results.append(json.loads(stdout))
        except ValueError:
            results.append(None)
    lines = None
    if window:
        t0, t1 = window["agent"][0]["t"], window["agent"][1]["t"]
        out = subprocess.run(["journalctl", "-q", "--no-pager", f"--since=@{t0:.6f}", f"--until=@{t1:.6f}",
                              "-p", "warning..warning", "-o", "cat"], capture_output=True, text=True)
        lines = sum(1 for line in out.stdout.splitlines() if "simulated warning" in line)
    return {"apps": len(apps), "window": window, "lines": lines, "seconds_to_common_probation": all_in_probation_after,
            "outcomes": [(r or {}).get("outcome") for r in results]}


def cmd_longrun(args) -> dict:
    """ROUNDS rounds of switches across APPS (every app switches to its other release, all at once),
    and after every ROLLBACK_EVERY rounds one round of rollbacks (every app to the failing release).
    A sample (process, D-Bus, database) after each rollback round, and at the start."""
    apps = args.apps
    current = {app: args.versions[0] for app in apps}
    samples = [{"switches": 0, "rollbacks": 0, **sample()}]
    rounds, tally, walls = [], {}, []
    switches = rollbacks = 0
    started = time.time()
    while switches < args.switches or rollbacks < args.rollbacks:
        block = min(args.rollback_every, max(0, (args.switches - switches + len(apps) - 1) // len(apps)))
        for _ in range(block):
            left = args.switches - switches
            lane = apps[:min(len(apps), left)]
            a, b = args.versions
            targets = [(app, b if current[app] == a else a) for app in lane]
            t0 = time.time()
            events = switch_all(targets)
            walls.append(time.time() - t0)
            for e in events:
                outcome = (e["result"] or {}).get("outcome") if isinstance(e["result"], dict) else None
                tally[f"switch:{outcome}"] = tally.get(f"switch:{outcome}", 0) + 1
                if outcome == "done":
                    current[e["app"]] = e["version"]
            switches += len(lane)
            rounds.append({"kind": "switch", "n": len(lane), "wall": walls[-1]})
        if rollbacks < args.rollbacks:
            lane = apps[:min(len(apps), args.rollbacks - rollbacks)]
            t0 = time.time()
            events = switch_all([(app, args.failing) for app in lane])
            for e in events:
                outcome = (e["result"] or {}).get("outcome") if isinstance(e["result"], dict) else None
                tally[f"rollback:{outcome}"] = tally.get(f"rollback:{outcome}", 0) + 1
            rollbacks += len(lane)
            rounds.append({"kind": "rollback", "n": len(lane), "wall": time.time() - t0})
        time.sleep(1)  # bloomctl's connections closed, the agent settled
        samples.append({"switches": switches, "rollbacks": rollbacks, **sample()})
        say(f"longrun: {switches} switches, {rollbacks} rollbacks, {time.time() - started:.0f} s, "
            f"RSS {samples[-1]['agent']['rss_kb'] / 1024:.1f} MB, {samples[-1]['agent']['fds']} fds")
    return {"samples": samples, "rounds": rounds, "tally": tally, "seconds": time.time() - started,
            "loop": loop_report()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("sample")
    p = sub.add_parser("idle")
    p.add_argument("--sec", type=float, default=30)
    p.add_argument("--without-metrics", action="store_true", help="move the textfile directory aside meanwhile")
    p = sub.add_parser("status")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--app", required=True)
    p = sub.add_parser("switch")
    p.add_argument("targets", nargs="+", help="APP=VERSION")
    p = sub.add_parser("journal")
    p.add_argument("--window", type=float, default=10)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("targets", nargs="+", help="APP=VERSION")
    p = sub.add_parser("longrun")
    p.add_argument("--switches", type=int, default=1000)
    p.add_argument("--rollbacks", type=int, default=100)
    p.add_argument("--rollback-every", type=int, default=10, help="switch rounds between two rollback rounds")
    p.add_argument("--versions", type=lambda s: s.split(","), required=True, help="A,B: the two good releases")
    p.add_argument("--failing", required=True)
    p.add_argument("apps", nargs="+")
    args = ap.parse_args(argv)
    if args.cmd == "sample":
        out = sample()
    else:
        out = globals()[f"cmd_{args.cmd}"](args)
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
