#!/usr/bin/python3
"""The inside half of bench/cost_bench.py: runs in the test machine, next to the agent.

Measures the agent's own cost from /proc (CPU time, resident memory) in three situations:

1. idle: the app serves, nothing happens, for --idle-sec;
2. flood: a switch to --flood-version, a release that logs --rate warnings a second, with a
   probation of --probation seconds; journald's rate limit is off for the run (a drop-in), so
   every line reaches the journal and the agent's journal monitor reads every one of them;
3. late burst: the same kind of release (--burst-version) with an error pattern that matches only
   the lines numbered from N on (N chosen so they come about 3/4 into probation): the monitor
   must trip on the 21st of them, and the delay between that line's journal timestamp and the
   agent's verdict says whether it kept up with the flood;
4. (unless --no-ratelimit-check) journald's default rate limit back, and --ratelimit-version,
   which logs as much: what the agent makes of journald's "Suppressed N messages".

Before them: each import's share of memory (import_footprint.py, against the installed package), and
the agent restarted, to be sampled after start-up alone, with the extension modules it has mapped.
Sampling only reads /proc, the journal and the state database; it never calls the agent.
Writes --out (JSON). Standard library and python3-systemd only (Debian's python3).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
DB = "/var/lib/bloom/state.db"
DROPIN = Path("/etc/systemd/journald.conf.d/90-bench-no-ratelimit.conf")

APP_FILE = """\
listen = ["127.0.0.1:8080"]
exec = "bin/sampleapp"
probation_sec = {probation}
ready_timeout_sec = 10
stop_timeout_sec = 10
keep_releases = 20
error_patterns = [{patterns}]
"""


def say(message: str) -> None:
    print(f"[cost] {message}", file=sys.stderr, flush=True)


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main_pid(unit: str) -> int:
    return int(sh("systemctl", "show", "-p", "MainPID", "--value", unit).strip())


def sample(pid: int) -> dict:
    """CPU seconds (user + system, all threads) and memory of one process, now."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)

    def kb(key: str) -> int | None:
        return int(status[key].split()[0]) if key in status else None

    rollup = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            rollup[key] = int(value.split()[0])
    except OSError:
        pass
    return {"t": time.time(), "cpu_sec": (int(fields[11]) + int(fields[12])) / TICK,
            "rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM"), "rss_anon_kb": kb("RssAnon"),
            "rss_file_kb": kb("RssFile"), "rss_shmem_kb": kb("RssShmem"), "pss_kb": rollup.get("Pss"),
            "pss_anon_kb": rollup.get("Pss_Anon"), "pss_file_kb": rollup.get("Pss_File"),
            "threads": int(status["Threads"].strip())}


def cpu_share(a: dict, b: dict) -> float:
    """Share of one CPU used between two samples."""
    return (b["cpu_sec"] - a["cpu_sec"]) / (b["t"] - a["t"])


def unit_memory(unit: str) -> str:
    return sh("systemctl", "show", "-p", "MemoryCurrent", "--value", unit).strip()


def configure(probation: float, patterns: list[str] = ()) -> None:
    # TOML literal strings: no escapes in the patterns
    Path("/etc/bloom/apps/web.toml").write_text(
        APP_FILE.format(probation=probation, patterns=", ".join(f"'{p}'" for p in patterns)))
    sh("bloomctl", "reload")


def steps_of(deployment: int) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT at, step FROM deployment_steps WHERE deployment = ? ORDER BY rowid",
                            (deployment,)).fetchall()
    finally:
        conn.close()
    return {step: datetime.fromisoformat(at).timestamp() for at, step in rows}


def latest_deployment() -> int:
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT max(id) FROM deployments").fetchone()[0] or 0
    finally:
        conn.close()


def wait_for_probation(before: int, timeout: float = 60) -> tuple[int, float]:
    """The new deployment's id and when its probation began (from the agent's step records)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        dep = latest_deployment()
        if dep > before:
            steps = steps_of(dep)
            if "probation" in steps:
                return dep, steps["probation"]
        time.sleep(0.1)
    raise SystemExit("probation did not begin")


def switch(version: str) -> subprocess.Popen:
    return subprocess.Popen(["bloomctl", "switch", "web", version, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    try:
        return json.loads(out)
    except ValueError:
        return {"rc": proc.returncode, "stderr": err[-2000:]}


_NUMBER = re.compile(r"simulated warning #(\d+) ")


def count_lines(unit: str, since: float, until: float) -> dict:
    """The unit's journal lines between two times: how many, and the first and last noise numbers
    (their difference + 1 is how many the app wrote meanwhile)."""
    from systemd import journal

    reader = journal.Reader()
    reader.add_match(_SYSTEMD_UNIT=unit)
    reader.seek_realtime(since)
    n, first, last = 0, None, None
    for entry in reader:
        if entry["__REALTIME_TIMESTAMP"].timestamp() > until:
            break
        n += 1
        m = _NUMBER.search(str(entry.get("MESSAGE", "")))
        if m:
            last = int(m[1])
            first = first if first is not None else last
    reader.close()
    return {"stored": n, "first_number": first, "last_number": last,
            "written": (last - first + 1) if first is not None else None, "seconds": until - since}


def find_line(unit: str, since: float, number: int) -> float | None:
    """Journal timestamp of the noise line numbered ``number``."""
    from systemd import journal

    reader = journal.Reader()
    reader.add_match(_SYSTEMD_UNIT=unit)
    reader.seek_realtime(since)
    needle = f"#{number} "
    found = None
    for entry in reader:
        if needle in str(entry.get("MESSAGE", "")):
            found = entry["__REALTIME_TIMESTAMP"].timestamp()
            break
    reader.close()
    return found


def extension_modules(pid: int) -> list[str]:
    """The Python extension modules mapped into a process: which optional imports it has loaded
    (markupsafe's for jinja2, _psutil_linux for psutil, _reader for the journal reader, ...)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if path.startswith("/usr/lib/python3") and ".so" in path:
            names.add(path.removeprefix("/usr/lib/python3/dist-packages/").removeprefix("/usr/lib/python3.11/"))
    return sorted(names)


def restart_agent() -> int:
    """A fresh agent, with the app declared and serving and nothing asked of it yet; its main pid."""
    sh("systemctl", "restart", "bloom-agent")  # Type=notify: returns after READY=1
    time.sleep(5)  # resuming and reconciling run after READY=1, as a task
    return main_pid("bloom-agent")


def monitor_log(version: str) -> str | None:
    """The journal monitor's own count of what it read (a line at the end of each probation)."""
    # journalctl --grep exits 1 when nothing matches (a package from before that line)
    out = subprocess.run(["journalctl", "-u", "bloom-agent", "-o", "cat", "--no-pager", "--grep",
                          f"journal monitor for web@{version}.service"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else None


def journald_restart(limit_off: bool) -> None:
    if limit_off:
        DROPIN.parent.mkdir(parents=True, exist_ok=True)
        DROPIN.write_text("[Journal]\nRateLimitIntervalSec=0\n")
    else:
        DROPIN.unlink(missing_ok=True)
    sh("systemctl", "restart", "systemd-journald")
    time.sleep(1)


def flood_window(version: str, probation: float, agent: int, margin: float = 2.0, length: float | None = None) -> dict:
    """Switch to a noisy release and sample the agent (and journald, and the app) through its probation."""
    before = latest_deployment()
    proc = switch(version)
    dep, began = wait_for_probation(before)
    time.sleep(max(0.0, began + margin - time.time()))
    unit = f"web@{version}.service"
    pids = {"agent": agent, "journald": main_pid("systemd-journald"), "app": main_pid(unit)}
    a = {k: sample(p) for k, p in pids.items()}
    length = length if length is not None else probation - 2 * margin
    time.sleep(length)
    b = {}
    for k, p in pids.items():
        try:
            b[k] = sample(p)
        except FileNotFoundError:  # rolled back meanwhile
            b[k] = None
    result = finish(proc)
    return {"deployment": dep, "probation_began": began, "window": [a["agent"]["t"], b["agent"]["t"]],
            "samples": {"before": a, "after": b},
            "cpu_share": {k: cpu_share(a[k], b[k]) if b[k] else None for k in pids},
            "result": result, "steps": steps_of(dep)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-sec", type=float, default=60)
    ap.add_argument("--probation", type=float, default=60)
    ap.add_argument("--rate", type=float, default=5000, help="lines per second the noisy releases log (for the report)")
    ap.add_argument("--flood-version", default="3.0.0")
    ap.add_argument("--burst-version", default="3.1.0")
    ap.add_argument("--ratelimit-version", default="3.2.0")
    ap.add_argument("--no-ratelimit-check", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    # each import's share, measured in this machine against the installed package
    from import_footprint import measure
    report: dict = {"config": vars(args), "memory": {}, "footprint": measure(Path("/usr/lib/python3/dist-packages"))}
    agent = main_pid("bloom-agent")
    report["memory"]["start"] = {"agent": sample(agent), "MemoryCurrent": unit_memory("bloom-agent"),
                                 "extensions": extension_modules(agent)}
    agent = restart_agent()
    report["memory"]["restarted"] = {"agent": sample(agent), "MemoryCurrent": unit_memory("bloom-agent"),
                                     "extensions": extension_modules(agent)}

    say(f"idle: {args.idle_sec:g} s")
    time.sleep(5)
    a = sample(agent)
    time.sleep(args.idle_sec)
    b = sample(agent)
    report["idle"] = {"samples": [a, b], "cpu_share": cpu_share(a, b), "cpu_sec": b["cpu_sec"] - a["cpu_sec"]}
    report["memory"]["after_idle"] = {"agent": b, "MemoryCurrent": unit_memory("bloom-agent")}

    say(f"flood: {args.flood_version} logs {args.rate:g} warnings/s through a {args.probation:g} s probation")
    journald_restart(limit_off=True)
    configure(args.probation)
    flood = flood_window(args.flood_version, args.probation, agent)
    flood["lines"] = count_lines(f"web@{args.flood_version}.service", *flood["window"])
    flood["monitor_log"] = monitor_log(args.flood_version)
    report["flood"] = flood
    report["memory"]["after_flood"] = {"agent": sample(agent), "MemoryCurrent": unit_memory("bloom-agent")}
    rate = flood["lines"]["stored"] / flood["lines"]["seconds"]

    # Lines numbered from N on match; N about 3/4 into probation at the rate just measured.
    at = 0.75 * args.probation
    prefix = int(rate * at) // 10_000
    pattern = rf"simulated warning #{prefix}\d{{4}} "
    say(f"late burst: {args.burst_version}, error pattern {pattern!r} (lines #{prefix}0000.. at ~{at:.0f} s)")
    configure(args.probation, [pattern])
    burst = flood_window(args.burst_version, args.probation, agent, length=at - 10)
    crossing_number = prefix * 10_000 + 20  # the 21st matching line
    burst["pattern"] = pattern
    burst["crossing_line"] = crossing_number
    burst["crossing_at"] = find_line(f"web@{args.burst_version}.service", burst["probation_began"], crossing_number)
    verdict = burst["steps"].get("rolling-back")
    burst["verdict_at"] = verdict
    burst["lag"] = (verdict - burst["crossing_at"]) if verdict and burst["crossing_at"] else None
    burst["monitor_log"] = monitor_log(args.burst_version)
    report["burst"] = burst
    report["memory"]["after_burst"] = {"agent": sample(agent), "MemoryCurrent": unit_memory("bloom-agent")}

    if not args.no_ratelimit_check:
        say(f"journald's default rate limit: {args.ratelimit_version} logs {args.rate:g} warnings/s")
        journald_restart(limit_off=False)
        configure(args.probation)
        before = latest_deployment()
        began = time.time()
        result = finish(switch(args.ratelimit_version))
        dep = latest_deployment()
        report["ratelimit"] = {"result": result, "steps": steps_of(dep) if dep > before else {},
                               "began": began}
        report["memory"]["end"] = {"agent": sample(agent), "MemoryCurrent": unit_memory("bloom-agent")}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
