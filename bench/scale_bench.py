#!/usr/bin/python3
"""Benchmark: how the agent's cost grows with the number of apps, and what a long run leaves behind.

    sudo /usr/bin/python3 bench/scale_bench.py [--apps 1,10,25,50] [--longrun 1000] [--json OUT]
                                               [--plot docs/images/scale.png]
    /usr/bin/python3 bench/scale_bench.py --analyse OUT      # the figures again from a saved record

Run as root on a Debian 12 host that can run the integration tests (make deps; make deb first;
python3-matplotlib for --plot). Two throw-away machines (tests/machine.py), one after the other,
each with the newest dist/bloom-agent_*_all.deb:

1. scale: apps ``s000``, ``s001``, ... (the sample app, 127.0.0.1:9000+i, every release logging
   --log-rate warnings a second) added level by level up to each N of --apps, all deployed. At each
   level: the agent's CPU over --idle-sec with nothing happening; ``bloomctl status`` latency (with
   and without an app, and ``bloomctl --version`` for the client's own start-up); --lone-switches
   switches of one app alone; --rounds rounds of switches of 10 apps at once; one round of 10
   switches to a release that floods errors and must be rolled back in probation; then every app
   switched at once with a long probation, and the agent's CPU while all N journal monitors read the
   journal. The agent's own overhead per switch comes from its step records (the state database).
2. long run (--longrun SWITCHES, 0 skips it): --longrun-apps apps switching in rounds, all at once,
   and one round of rollbacks every 10 rounds (SWITCHES / 10 in all), ``history_keep``
   set to --history-keep so that retention runs; the agent's RSS, descriptors, threads, D-Bus match
   rules and the state database sampled after every rollback round.

The agent is driven only from outside (bench/scale_drive.py in the machine: bloomctl --json, /proc,
busctl, the state database read-only). See docs/benchmarks.md for the figures.
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

from common import (REMOTE, app_toml, check_host, fmt, git_describe, install_agent, machine, machine_facts, neighbours,
                    newest_deb, put_release, run, say, write)

from analysis import scale as analysis

GOOD = ("1.0.0", "1.1.0")
FAILING = "9.0.0"
BASE_PORT = 9000
# A first start of 50 apps at once on a busy 2-CPU host can take a while: ready_timeout_sec is generous.
APP_KEYS = {"ready_timeout_sec": 60, "stop_timeout_sec": 10, "keep_releases": 10, "max_error_rate_per_minute": 20}
# The failing release logs errors at this rate: 21 within half a second of probation, so it is
# rolled back by the journal monitor, in probation, whatever the machine's speed.
FAIL_ERRORS_PER_SEC = 50
BATCH = 10
# First deploys (a daemon-reload, the socket enabled and started) are set-up, not measured: fewer at once.
FIRST_BATCH = 5


def app_name(i: int) -> str:
    return f"s{i:03d}"


def drive(m, *args: str, timeout: float = 3600) -> dict:
    out = run(m, ["/usr/bin/python3", f"{REMOTE}/scale_drive.py", *args], timeout=timeout)
    return json.loads(out)


def declare(m, names: list[str], first_index: int, probation: float) -> None:
    """Write the app files of names (ports from their index) in one go; the agent reads them at reload."""
    script = "".join(f"cat > /etc/bloom/apps/{name}.toml <<'EOF'\n"
                     + app_toml(BASE_PORT + first_index + i, probation_sec=probation, **APP_KEYS) + "EOF\n"
                     for i, name in enumerate(names))
    run(m, ["sh", "-c", script])


def set_probation(m, names: list[str], probation: float) -> None:
    run(m, ["sh", "-c", f"sed -i 's/^probation_sec = .*/probation_sec = {probation}/' "
            + " ".join(f"/etc/bloom/apps/{n}.toml" for n in names)])
    run(m, ["bloomctl", "reload"])


def install_releases(m, names: list[str]) -> None:
    """Every release for each app: four apps at a time (an app takes one operation at a time)."""
    each = " ".join(f"bloomctl install \"$0\" /root/releases/sample-{v}.tar.gz --version {v} >/dev/null &&"
                    for v in (*GOOD, FAILING)) + " true"
    run(m, ["sh", "-c", f"xargs -P 4 -n 1 sh -c '{each}'"], input="".join(f"{n}\n" for n in names), timeout=3600)


def other(version: str) -> str:
    return GOOD[1] if version == GOOD[0] else GOOD[0]


def switch_round(m, current: dict[str, str], names: list[str], to: str | None = None) -> dict:
    """names switched at once, each to its other good release (or all to ``to``)."""
    targets = [f"{n}={to or other(current[n])}" for n in names]
    t0 = time.time()
    events = drive(m, "switch", *targets)["events"]
    wall = time.time() - t0
    for e in events:
        if (e.get("result") or {}).get("outcome") == "done":
            current[e["app"]] = e["version"]
    return {"events": events, "wall": wall}


def agent_trouble(m) -> dict:
    """What systemd and the journal say about the agent, kept in the record when a level fails."""
    show = m.run(["systemctl", "show", "bloom-agent", "-p", "NRestarts", "-p", "Result", "-p", "MainPID"]).stdout
    log = m.run(["journalctl", "--no-pager", "-n", "40", "-o", "short-precise", "-u", "bloom-agent"]).stdout
    return {"systemctl_show": show, "journal": log[-8000:]}


def run_scale(m, args, work: Path, out: dict) -> None:
    """Fills ``out`` level by level, so that a run that fails keeps the levels it finished."""
    install_agent(m, args.deb, scripts=("scale_drive.py",))
    for version in GOOD:
        put_release(m, work, version, {"warn_log_per_sec": args.log_rate} if args.log_rate else None, app="sample")
    put_release(m, work, FAILING, {"error_log_per_sec": FAIL_ERRORS_PER_SEC}, app="sample")
    out["machine"] = machine_facts(m)
    current: dict[str, str] = {}
    levels = out["levels"] = []
    for n in args.apps:
        try:
            levels.append(run_level(m, args, n, current))
        except Exception as exc:
            say(f"level {n} failed: {exc}")
            out["failed"] = {"apps": n, "error": str(exc)[-3000:], **agent_trouble(m)}
            return
        row = analysis.level_row(levels[-1])
        say(f"level {n} done in {levels[-1]['seconds']:.0f} s: RSS {row['rss_mb']:.1f} MB, idle CPU "
            f"{fmt(pct(row['idle_cpu']), ' %', 2)}, own overhead {fmt(ms(row['lone_own_median']), ' ms')}")


def run_level(m, args, n: int, current: dict[str, str]) -> dict:
    """Apps added up to n, then the level's measurements."""
    level_started = time.time()
    new = [app_name(i) for i in range(len(current), n)]
    say(f"level {n}: declaring and deploying {len(new)} app(s)")
    declare(m, new, len(current), args.probation)
    run(m, ["bloomctl", "reload"])
    install_releases(m, new)
    for i in range(0, len(new), FIRST_BATCH):
        batch = new[i:i + FIRST_BATCH]
        first = switch_round(m, {**current, **dict.fromkeys(batch, GOOD[1])}, batch, to=GOOD[0])
        bad = [e for e in first["events"] if (e.get("result") or {}).get("outcome") != "done"]
        if bad:
            raise RuntimeError(f"first deploy failed: {bad[0]}")
        current.update(dict.fromkeys(batch, GOOD[0]))
    names = sorted(current)
    time.sleep(args.settle)
    say(f"level {n}: idle {args.idle_sec:g} s")
    idle = drive(m, "idle", "--sec", str(args.idle_sec))
    idle_without_metrics = None
    if args.idle_without_metrics:
        say(f"level {n}: idle {args.idle_sec:g} s without the metrics textfile directory")
        idle_without_metrics = drive(m, "idle", "--sec", str(args.idle_sec), "--without-metrics")
    status = drive(m, "status", "--count", str(args.status_samples), "--app", names[0])
    say(f"level {n}: {args.lone_switches} lone switches of {names[0]}")
    lone = []
    for _ in range(args.lone_switches):
        lone.extend(switch_round(m, current, [names[0]])["events"])
    width = min(BATCH, n)
    rounds, rollback_rounds = [], []
    for r in range(args.rounds):
        lane = [names[(r * width + j) % n] for j in range(width)]
        say(f"level {n}: round {r + 1}/{args.rounds}: {width} switches at once")
        rounds.append(switch_round(m, current, lane))
    lane = [names[(args.rounds * width + j) % n] for j in range(width)]
    say(f"level {n}: {width} switches at once to the failing release")
    rollback_rounds.append(switch_round(m, current, lane, to=FAILING))
    journal = None
    if args.journal_probation:
        say(f"level {n}: all {n} apps switched at once, {args.journal_probation:g} s probation")
        set_probation(m, names, args.journal_probation)
        # each app to its other good release: all releases log, none fails
        targets_by_version: dict[str, list[str]] = {}
        for name in names:
            targets_by_version.setdefault(other(current[name]), []).append(name)
        journal = journal_phase(m, targets_by_version, args.journal_window)
        for version, group in targets_by_version.items():
            for name, outcome in zip(group, journal["outcomes_by_version"][version]):
                if outcome == "done":
                    current[name] = version
        set_probation(m, names, args.probation)
    time.sleep(args.settle)
    return {"apps": n, "probation": args.probation, "idle": idle, "idle_without_metrics": idle_without_metrics,
            "status": status, "lone": lone,
            "rounds": rounds, "rollback_rounds": rollback_rounds, "journal": journal,
            "sample": drive(m, "sample"), "seconds": time.time() - level_started}


def journal_phase(m, targets_by_version: dict[str, list[str]], window: float) -> dict:
    """Every app switched at once, each to the good release it does not run (targets_by_version),
    and the agent's CPU once all are in probation (scale_drive.py journal)."""
    targets = [f"{name}={version}" for version, group in targets_by_version.items() for name in group]
    res = drive(m, "journal", "--window", str(window), *targets)
    by_version: dict[str, list] = {v: [] for v in targets_by_version}
    for target, outcome in zip(targets, res["outcomes"]):
        by_version[target.split("=", 1)[1]].append(outcome)
    res["outcomes_by_version"] = by_version
    return res


def run_longrun(m, args, work: Path) -> dict:
    install_agent(m, args.deb, scripts=("scale_drive.py",))
    for version in GOOD:
        put_release(m, work, version, {"warn_log_per_sec": args.log_rate} if args.log_rate else None, app="sample")
    put_release(m, work, FAILING, {"error_log_per_sec": FAIL_ERRORS_PER_SEC}, app="sample")
    write(m, "/etc/bloom/agent.toml", f"[agent]\nhistory_keep = {args.history_keep}\n")
    names = [app_name(i) for i in range(args.longrun_apps)]
    declare(m, names, 0, args.probation)
    run(m, ["systemctl", "restart", "bloom-agent"])
    install_releases(m, names)
    switch_round(m, dict.fromkeys(names, GOOD[1]), names, to=GOOD[0])
    rollbacks = args.longrun // 10
    say(f"long run: {args.longrun} switches and {rollbacks} rollbacks across {len(names)} apps")
    res = drive(m, "longrun", "--switches", str(args.longrun), "--rollbacks", str(rollbacks),
                "--versions", ",".join(GOOD), "--failing", FAILING, *names, timeout=6 * 3600)
    res["apps"] = len(names)
    res["history_keep"] = args.history_keep
    res["probation"] = args.probation
    return res


# ------------------------------------------------------------------------------------ report


def ms(v):
    return None if v is None else v * 1000


def pct(v):
    return None if v is None else v * 100


def verdict(met) -> str:
    return "met" if met else "NOT met" if met is False else "unknown"


def print_report(res: dict) -> dict:
    figures = {}
    if res.get("scale"):
        rows = [analysis.level_row(level) for level in res["scale"]["levels"]]
        figures["levels"] = rows
        figures["scale_goals"] = analysis.scale_goals(rows)
        info = res["scale"]["machine"]
        print(f"\nmachine: {info.get('cpus')} CPUs ({info.get('cpu_model')}), kernel {info.get('kernel')}, "
              f"{info.get('systemd')}, Debian {info.get('debian')}; bloom-agent {info.get('bloom_agent')}")
        print(f"every release logs {res['config']['log_rate']:g} warnings/s; probation_sec "
              f"{res['config']['probation']:g}; times in ms (medians unless max), CPU in % of one CPU; own: the "
              f"agent's own overhead per switch; rt: a status round trip on the control socket from a running "
              f"client\n")
        head = ("apps", "RSS MB", "idle CPU", "own lone", "own 10x med", "own 10x max", "10x round s",
                "reload lone", "status rt", "status APP rt", "bloomctl status", "bloomctl status APP",
                "bloomctl --version", "journal CPU", "journald", "lines/s")
        print(" | ".join(head))
        for r in rows:
            print(" | ".join((
                str(r["apps"]), fmt(r["rss_mb"]), fmt(pct(r["idle_cpu"]), digits=2), fmt(ms(r["lone_own_median"])),
                fmt(ms(r["concurrent_own_median"])), fmt(ms(r["concurrent_own_max"])),
                fmt(r["concurrent_round_wall_median"], digits=2), fmt(ms(r["lone_reload_median"])),
                fmt(ms(r["status_all_agent"]), digits=2), fmt(ms(r["status_app_agent"]), digits=2),
                fmt(ms(r["status_all_median"])), fmt(ms(r["status_app_median"])), fmt(ms(r["version_median"])),
                fmt(pct(r["journal_agent_cpu"]), digits=2), fmt(pct(r["journal_journald_cpu"]), digits=2),
                fmt(r["journal_lines_per_sec"], digits=0))))
        print()
        for r in rows:
            print(f"  {r['apps']} apps: outcomes concurrent {r['concurrent_outcomes']}, failing release "
                  f"{r['rollback_outcomes']} ({fmt(r['rollback_wall_median'], ' s', 2)} median), journal phase "
                  f"{r['journal_outcomes']} over {fmt(r['journal_window_sec'], ' s')}; fds {r['fds']}, threads "
                  f"{r['threads']}, D-Bus matches {r['dbus_matches']}; lone switches {r['lone_n']}, own max "
                  f"{fmt(ms(r['lone_own_max']))} ms; longest loop stall in the concurrent rounds "
                  f"{fmt(r['loop_stall_rounds_ms'])} ms; idle: {r['idle_passes']} loop passes in "
                  f"{fmt(r['idle_sec'])} s, without the metrics directory "
                  f"{fmt(pct(r['idle_cpu_no_metrics']), ' %', 2)}")
        failed = res["scale"].get("failed")
        if failed:
            print(f"\nlevel {failed['apps']} FAILED: {failed['error'][-600:]}\n{failed['systemctl_show']}"
                  f"agent's journal, last lines:\n{failed['journal'][-3000:]}")
        print("\nGoals (scale)")
        for g in figures["scale_goals"]:
            print(f"  [{verdict(g['met'])}] {g['goal']}: {g['value']}")
    if res.get("longrun"):
        s = analysis.longrun_summary(res["longrun"])
        figures["longrun"] = s
        figures["longrun_goals"] = analysis.longrun_goals(s)
        print(f"\nLong run: {s['switches']} switches and {s['rollbacks']} rollbacks across "
              f"{res['longrun']['apps']} apps in {s['seconds']:.0f} s (history_keep {res['longrun']['history_keep']}); "
              f"outcomes {s['tally']}")
        print(f"  warm-up: the first sample after {s['warmup_at']['switches']} switches and "
              f"{s['warmup_at']['rollbacks']} rollbacks; [start, after warm-up, end]:")
        print(f"  RSS kB {s['rss_kb']} (anon {s['rss_anon_kb']}): growth after warm-up {s['rss_growth_kb']} kB")
        print(f"  fds {s['fds']}, threads {s['threads']}, D-Bus matches {s['dbus_matches']}")
        print(f"  state.db bytes {s['db_bytes']}; rows {s['db_rows']}")
        print(f"  a round of {res['longrun']['apps']} switches: median {fmt(s['round_wall_median'], ' s', 2)}, "
              f"first/last {s['round_wall_first_last']}; longest loop stall since start "
              f"{s['loop_longest_stall_ms']} ms")
        print("Goals (long run)")
        for g in figures["longrun_goals"]:
            print(f"  [{verdict(g['met'])}] {g['goal']}: {g['value']}")
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--apps", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 25, 50],
                    help="levels, increasing (default 1,10,25,50); empty skips the scale part")
    ap.add_argument("--idle-sec", type=float, default=30)
    ap.add_argument("--idle-without-metrics", action="store_true",
                    help="a second idle window with node_exporter's textfile directory moved aside")
    ap.add_argument("--settle", type=float, default=3, help="seconds left between phases")
    ap.add_argument("--status-samples", type=int, default=10)
    ap.add_argument("--lone-switches", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of 10 switches at once per level")
    ap.add_argument("--probation", type=float, default=2)
    ap.add_argument("--log-rate", type=float, default=5, help="warnings a second every release logs")
    ap.add_argument("--journal-probation", type=float, default=60,
                    help="probation of the all-apps-at-once switch (0 skips the journal phase)")
    ap.add_argument("--journal-window", type=float, default=10)
    ap.add_argument("--longrun", type=int, default=1000, help="switches in the long run (0: none)")
    ap.add_argument("--longrun-apps", type=int, default=10)
    ap.add_argument("--history-keep", type=int, default=50)
    ap.add_argument("--deb", type=Path)
    ap.add_argument("--json", type=Path, help="the raw record and the figures")
    ap.add_argument("--plot", type=Path, help="the curves as a PNG")
    ap.add_argument("--analyse", type=Path, help="print the figures of a saved --json record (no machine)")
    args = ap.parse_args(argv)

    if args.analyse:
        res = json.loads(args.analyse.read_text())
        print_report(res)
        if args.plot:
            plot(res, args.plot)
        return 0
    check_host()
    args.deb = (args.deb or newest_deb()).resolve()
    work = Path(tempfile.mkdtemp(prefix="bloom-scale-"))
    started = time.time()
    res = {"config": {**{k: v for k, v in vars(args).items() if k not in ("deb", "json", "plot", "analyse")},
                      "deb": args.deb.name, "deb_sha256": hashlib.sha256(args.deb.read_bytes()).hexdigest(),
                      "git": git_describe(), "command": shlex.join([sys.executable, *sys.argv]),
                      "host": platform.node()},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "neighbours": {}}
    try:
        if args.apps and args.apps != [0]:
            res["neighbours"]["scale_before"] = neighbours()
            with machine() as m:
                part = time.time()
                res["scale"] = {}
                try:
                    run_scale(m, args, work, res["scale"])
                finally:
                    res["scale"]["seconds"] = time.time() - part
            res["neighbours"]["scale_after"] = neighbours()
        if args.longrun:
            res["neighbours"]["longrun_before"] = neighbours()
            with machine() as m:
                res["longrun"] = run_longrun(m, args, work)
            res["neighbours"]["longrun_after"] = neighbours()
    finally:
        res["duration_sec"] = time.time() - started
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
            say(f"raw record written to {args.json}")
    figures = print_report(res)
    print(f"\nother machines on this host: {res['neighbours']}")
    if args.plot:
        plot(res, args.plot)
    if args.json:
        res["figures"] = figures
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.time() - started:.0f} s")
    print(f"run time: {time.time() - started:.0f} s")
    return 0


def plot(res: dict, path: Path) -> None:
    from analysis import plot as plotting
    rows = [analysis.level_row(level) for level in (res.get("scale") or {}).get("levels", [])]
    if not rows:
        return
    longrun = analysis.longrun_summary(res["longrun"]) if res.get("longrun") else None
    title = (f"bloom-agent {res['config'].get('git')}: 2-CPU shared host, nspawn machine; every release logs "
             f"{res['config']['log_rate']:g} lines/s; probation {res['config']['probation']:g} s")
    say(f"curves drawn in {plotting.draw(rows, path, title, longrun)}")


if __name__ == "__main__":
    sys.exit(main())
