#!/usr/bin/python3
"""Benchmark: what the agent itself costs, in memory and CPU, idle and while it watches a noisy release.

    /usr/bin/python3 bench/cost_bench.py [--idle-sec 60] [--probation 60] [--rate 5000] [--json OUT]

Run as root on a Debian 12 host that can run the integration tests (make deps; make deb first).
It boots a throw-away systemd machine with tests/machine.py, installs the newest
dist/bloom-agent_*_all.deb, deploys the sample app as ``web`` and runs bench/cost_drive.py in the
machine (see there for the phases): the agent idle; a switch to a release that logs RATE warnings a
second through a PROBATION-second probation, with journald's rate limit off; the same with an
error pattern that starts matching about 3/4 into probation, to see whether the journal monitor
kept up; and the same noisy release under journald's default rate limit. No load generator runs:
this is the agent's own cost, not the app's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import (REMOTE, check_host, fmt, git_describe, install_agent, machine, machine_facts, neighbours,
                    newest_deb, put_release, run, say, write)
from import_footprint import table as footprint_table

VERSIONS = {"1.0.0": None, "3.0.0": "flood", "3.1.0": "burst", "3.2.0": "ratelimit"}
APP_FILE = """\
listen = ["127.0.0.1:8080"]
exec = "bin/sampleapp"
probation_sec = 1
ready_timeout_sec = 10
stop_timeout_sec = 10
keep_releases = 20
"""
TARGET_RSS_MB, TARGET_IDLE_CPU = 40, 0.01


def prepare(m, deb: Path, work: Path, rate: float) -> dict:
    install_agent(m, deb, scripts=("cost_drive.py", "import_footprint.py"))
    write(m, "/etc/bloom/apps/web.toml", APP_FILE)
    run(m, ["bloomctl", "reload"])
    for version, role in VERSIONS.items():
        remote = put_release(m, work, version, {"warn_log_per_sec": rate} if role else None)
        run(m, ["bloomctl", "install", "web", remote])
    run(m, ["bloomctl", "switch", "web", "1.0.0"])
    run(m, ["curl", "-fsS", "--max-time", "5", "http://127.0.0.1:8080/"])
    return machine_facts(m)


def mb(kb) -> str:
    return fmt(kb / 1024 if kb is not None else None, " MB", 1)


def pct(share) -> str:
    return fmt(share * 100 if share is not None else None, " %", 2)


def targets(r: dict) -> list[dict]:
    mem = r["memory"]
    peak = max(s["agent"]["hwm_kb"] for s in mem.values())
    rss = {k: s["agent"]["rss_kb"] for k, s in mem.items()}
    for name in ("flood", "burst"):
        rss[f"during_{name}"] = r[name]["samples"]["after"]["agent"]["rss_kb"]
    anon = max(s["agent"]["rss_anon_kb"] for s in mem.values())
    # The target is the agent after start-up; the rest is how it grows with use.
    started = rss.get("restarted")
    out = [{"target": f"resident memory < {TARGET_RSS_MB} MB after start-up",
            "value": "RSS " + ", ".join(f"{k} {mb(v)}" for k, v in rss.items())
                     + f"; of it anonymous (private) at most {mb(anon)}; peak (VmHWM) {mb(peak)}",
            "met": started < TARGET_RSS_MB * 1024 if started is not None else None},
           {"target": "CPU < 1 % idle",
            "value": f"{pct(r['idle']['cpu_share'])} of one CPU over {r['idle']['samples'][1]['t'] - r['idle']['samples'][0]['t']:.0f} s "
                     f"({r['idle']['cpu_sec']:.2f} CPU s)",
            "met": r["idle"]["cpu_share"] < TARGET_IDLE_CPU}]
    b = r["burst"]
    lines = r["flood"]["lines"]
    kept = b["lag"] is not None and b["lag"] < 1.0 and (b["result"] or {}).get("outcome") == "rolled-back"
    out.append({"target": "keeps up with a release logging the flood (late errors still detected promptly)",
                "value": f"flood: {lines['stored']} lines stored in {lines['seconds']:.1f} s "
                         f"({lines['stored'] / lines['seconds']:.0f}/s; the app wrote {lines['written']}), agent "
                         f"{pct(r['flood']['cpu_share']['agent'])} of one CPU, outcome "
                         f"{(r['flood']['result'] or {}).get('outcome')}; late burst: verdict "
                         f"{fmt(b['lag'] * 1000 if b['lag'] is not None else None, ' ms', 0)} after the journal "
                         f"timestamp of line #{b['crossing_line']}, outcome {(b['result'] or {}).get('outcome')}",
                "met": kept})
    return out


def print_report(res: dict) -> None:
    r, info = res["report"], res["machine"]
    print()
    print(f"machine: {info.get('cpus')} CPUs ({info.get('cpu_model')}), kernel {info.get('kernel')}, "
          f"{info.get('systemd')}, Debian {info.get('debian')}, nspawn container; bloom-agent {info.get('bloom_agent')}")
    print()
    print("Agent memory (from /proc/PID/status) and the unit's MemoryCurrent:")
    for k, s in r["memory"].items():
        a = s["agent"]
        print(f"  {k:12} RSS {mb(a['rss_kb']):>9} (anon {mb(a['rss_anon_kb'])}, file {mb(a['rss_file_kb'])}), "
              f"PSS {mb(a.get('pss_kb'))}, peak {mb(a['hwm_kb'])}, {a['threads']} threads; "
              f"MemoryCurrent {s['MemoryCurrent']}")
    for name in ("flood", "burst"):
        a = r[name]["samples"]["after"]["agent"]
        print(f"  {'during ' + name:12} RSS {mb(a['rss_kb']):>9} (anon {mb(a['rss_anon_kb'])}, file {mb(a['rss_file_kb'])}, "
              f"shmem {mb(a.get('rss_shmem_kb'))}), PSS {mb(a.get('pss_kb'))} (anon {mb(a.get('pss_anon_kb'))}), "
              f"peak {mb(a['hwm_kb'])}")
    print()
    for k, s in r["memory"].items():
        if "extensions" in s:
            print(f"  extension modules mapped ({k}): {', '.join(s['extensions'])}")
    print()
    if "footprint" in r:
        print("What each import adds, in the machine (bench/import_footprint.py):")
        print(footprint_table(r["footprint"]))
        print()
    i = r["idle"]
    print(f"Idle: agent {pct(i['cpu_share'])} of one CPU ({i['cpu_sec']:.2f} CPU s in "
          f"{i['samples'][1]['t'] - i['samples'][0]['t']:.1f} s)")
    for name, label in (("flood", "Flood"), ("burst", "Late burst")):
        f = r[name]
        res_ = f["result"] or {}
        w = f["window"][1] - f["window"][0]
        print(f"{label}: switch to {res_.get('version')} -> {res_.get('outcome')} "
              f"({(res_.get('reason') or '')[:150]}); sampled {w:.1f} s of probation: CPU share of one CPU: "
              + ", ".join(f"{k} {pct(v)}" for k, v in f["cpu_share"].items()))
    lines = r["flood"]["lines"]
    print(f"  flood lines in the window: {lines['stored']} stored in the journal, the app wrote {lines['written']} "
          f"(#{lines['first_number']}..#{lines['last_number']}): {lines['stored'] / lines['seconds']:.0f} lines/s")
    for name in ("flood", "burst"):
        if r[name].get("monitor_log"):
            print(f"  {name}: {r[name]['monitor_log']}")
    b = r["burst"]
    print(f"  late burst: pattern {b['pattern']!r}; line #{b['crossing_line']} (the 21st match) in the journal at "
          f"{fmt(b['crossing_at'] - b['probation_began'] if b['crossing_at'] else None, ' s', 2)} into probation; "
          f"verdict (rolling-back recorded) {fmt(b['lag'] * 1000 if b['lag'] is not None else None, ' ms', 0)} later")
    if "ratelimit" in r:
        rl = r["ratelimit"]
        res_ = rl["result"] or {}
        steps = rl["steps"]
        when = (steps.get("rolling-back") - steps["probation"]) if steps.get("rolling-back") and steps.get("probation") else None
        print(f"journald's default rate limit: switch to {res_.get('version')} (warnings only) -> {res_.get('outcome')}"
              + (f" {when:.1f} s into probation" if when is not None else "") + f": {(res_.get('reason') or '')[:200]}")
    print()
    print("Targets")
    for t in res["targets"]:
        print(f"  [{'met' if t['met'] else 'NOT met' if t['met'] is False else 'unknown'}] {t['target']}: {t['value']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-sec", type=float, default=60)
    ap.add_argument("--probation", type=float, default=60)
    ap.add_argument("--rate", type=float, default=5600,
                    help="warnings per second the noisy releases are set to log (the sample app reaches a little "
                         "less: the report gives what reached the journal)")
    ap.add_argument("--no-ratelimit-check", action="store_true")
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    check_host()
    deb = (args.deb or newest_deb()).resolve()
    work = Path(tempfile.mkdtemp(prefix="bloom-bench-"))
    started = time.time()
    git = git_describe()
    with machine() as m:
        info = prepare(m, deb, work, args.rate)
        before = neighbours()
        cmd = ["/usr/bin/python3", f"{REMOTE}/cost_drive.py", "--idle-sec", str(args.idle_sec),
               "--probation", str(args.probation), "--rate", str(args.rate), "--out", "/root/cost.json",
               *(["--no-ratelimit-check"] if args.no_ratelimit_check else [])]
        say(f"measuring in the machine (about {args.idle_sec + 3 * args.probation + 60:.0f} s)")
        proc = m.run(cmd, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"cost_drive.py failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        m.get("/root/cost.json", work / "cost.json")
        report = json.loads((work / "cost.json").read_text())
        after = neighbours()
    res = {"config": {**vars(args), "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
                      "git": git, "command": shlex.join([sys.executable, *sys.argv]), "host": platform.node()},
           "machine": info, "neighbours": {"before": before, "after": after}, "report": report,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
           "duration_sec": time.time() - started}
    res["config"]["deb"] = str(res["config"]["deb"])
    res["targets"] = targets(report)
    print_report(res)
    print(f"\nother machines on this host: before {before}, after {after}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
        say(f"figures written to {args.json}")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
