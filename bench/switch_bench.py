#!/usr/bin/python3
"""Benchmark: bloom-agent's switch against `systemctl restart`, under saturating load.

    /usr/bin/python3 bench/switch_bench.py [--switches 20] [--restarts 20] [--connections 50]
                                           [--pause 2] [--json OUT] [--keep-logs DIR]

Run as root on a Debian 12 host that can run the integration tests (make deps; make deb first).
It boots a throw-away systemd machine with tests/machine.py, installs the newest
dist/bloom-agent_*_all.deb there with apt, and declares the app ``web`` (the sample app,
127.0.0.1:8080). Then, inside the machine:

1. wrk at saturation on web (one connection per wrk thread, bench/reqlog.lua logs every
   request), and ``bloomctl switch web V --json`` SWITCHES times, alternating between two
   installed releases, with PAUSE seconds of plain load before each switch and after the last;
2. the same load on ``plain.service``: the same sample app binding its own port
   (127.0.0.1:8081, Type=notify), deployed "the usual way": a symlink moved to the other
   release and ``systemctl restart plain``, RESTARTS times with the same pauses.

It prints the failed requests and the latency inside the deploy windows (the wall time of
each bloomctl / systemctl call) against outside them, and each switch's time split from
bloomctl's JSON. See docs/benchmarks.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import (REMOTE, Windows, check_host, fetch_dir, finish, fmt, git_describe, install_agent, logical_requests,
                    machine, machine_facts, ms, neighbours, newest_deb, percentile, put_release, read_connections,
                    run, say, stats, time_command)

VERSIONS = ("1.0.0", "1.1.0")
APP_PORT, PLAIN_PORT = 8080, 8081
WRK_TIMEOUT_SEC = 5

APP_FILE = """\
listen = ["127.0.0.1:{port}"]
exec = "bin/sampleapp"
probation_sec = {probation}
ready_timeout_sec = 10
stop_timeout_sec = 10
keep_releases = 5
"""

# The baseline: the same app, the same kind of unit (Type=notify, DynamicUser, the sandbox
# the agent's template applies), but it binds its own port, so a restart closes it.
PLAIN_UNIT = """\
[Unit]
Description=sample app deployed the usual way (benchmark baseline)

[Service]
Type=notify
NotifyAccess=main
WorkingDirectory=/opt/plain/current
ExecStart=/opt/plain/current/bin/sampleapp --listen 127.0.0.1:{port}
TimeoutStartSec=10
TimeoutStopSec=10
KillMode=mixed
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
"""

# in the order the agent takes them (since 45e99dc the socket is pointed after the old release stopped)
SWITCH_STEPS = ("starting", "checking", "stopping-old", "pointing", "daemon-reload", "probation", "blessing")
CLIENT_SAMPLES = 10


def prepare(m, deb: Path, work: Path, probation: float) -> dict:
    """Install the package, deploy web, set up plain.service; returns facts about the machine."""
    install_agent(m, deb)
    run(m, ["mkdir", "-p", "/opt/plain/releases"])
    app_file = work / "web.toml"
    app_file.write_text(APP_FILE.format(port=APP_PORT, probation=probation))
    m.put(app_file, "/etc/bloom/apps/web.toml")
    run(m, ["bloomctl", "reload"])
    for version in VERSIONS:
        remote = put_release(m, work, version)
        run(m, f"mkdir -p /opt/plain/releases/{version} && tar -xzf {remote} -C /opt/plain/releases/{version}")
    say(f"deploying web {VERSIONS[0]}, installing {VERSIONS[1]}")
    run(m, ["bloomctl", "deploy", "web", f"/root/releases/web-{VERSIONS[0]}.tar.gz"])
    run(m, ["bloomctl", "install", "web", f"/root/releases/web-{VERSIONS[1]}.tar.gz"])
    unit = work / "plain.service"
    unit.write_text(PLAIN_UNIT.format(port=PLAIN_PORT))
    m.put(unit, "/etc/systemd/system/plain.service")
    run(m, f"ln -sfn releases/{VERSIONS[0]} /opt/plain/current && systemctl daemon-reload "
           "&& systemctl start plain.service")
    for port in (APP_PORT, PLAIN_PORT):
        run(m, ["curl", "-fsS", "--max-time", "5", f"http://127.0.0.1:{port}/"])
    info = machine_facts(m)
    # what bloomctl costs before it talks to the agent (part of every switch's wall time)
    info["bloomctl_version_sec"] = time_command(m, ["bloomctl", "--version"], 5)["median"]
    return info


def run_phase(m, mode: str, count: int, args, work: Path, load: bool = True, name: str | None = None) -> dict:
    name = name or mode
    port = APP_PORT if mode == "switch" else PLAIN_PORT
    log_dir = f"/root/bench-logs/{name}"
    out = f"/root/bench-{name}.json"
    cmd = ["/usr/bin/python3", f"{REMOTE}/drive.py", "--mode", mode, "--url", f"http://127.0.0.1:{port}/",
           "--versions", ",".join(VERSIONS), "--count", str(count), "--pause", str(args.pause),
           "--warmup", str(args.warmup), "--connections", str(args.connections),
           "--timeout", f"{WRK_TIMEOUT_SEC}s", "--log-dir", log_dir, "--out", out,
           "--client-samples", str(CLIENT_SAMPLES if mode == "switch" else 0), *([] if load else ["--no-load"])]
    say(f"{name}: {count} deploys " + (f"under wrk -t{args.connections} -c{args.connections}, " if load else "")
        + f"{args.pause:g} s apart (about {args.warmup + (count + 1) * (args.pause + 1.5):.0f} s)")
    before = neighbours()
    proc = m.run(cmd, timeout=3600)
    after = neighbours()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} phase failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    local = work / name
    fetch_dir(m, log_dir, local, f"bench-{name}")
    m.get(out, local / "drive.json")
    report = json.loads((local / "drive.json").read_text())
    report["log_dir"] = str(local)
    report["neighbours"] = {"before": before, "after": after}
    return report


# ---------------------------------------------------------------------------------- analysis


def step_edges(e: dict) -> list[tuple[str, float, float]] | None:
    """One switch as spans (name, start, end), from bloomctl's start to its exit: the agent's own
    record of when it began each step (state database, milliseconds) where the run has it; else
    the agent's start of the deployment plus bloomctl's step durations (then the few ms of
    bookkeeping between steps are not placed)."""
    t = (e.get("result") or {}).get("timings") or {}
    if "agent_started" not in e or not t:
        return None
    order = ("starting", "checking", "stopping-old", "pointing", "probation", "blessing")
    recorded = {step: at for at, step in e.get("steps") or []}
    if all(s in recorded for s in order):
        starts = [recorded[s] for s in order]
    else:
        starts, at = [], e["agent_started"]
        for s in order:
            starts.append(at)
            at += t.get(s) or 0
    edges = [("bloomctl start", e["t0"], starts[0])]
    for i, s in enumerate(order[:-1]):
        edges.append((s, starts[i], starts[i + 1]))
    edges.append(("blessing+exit", starts[-1], max(e["t1"], starts[-1])))
    return edges


def core_spans(report: dict) -> list[tuple[float, float]]:
    """For switches: the part of each switch where requests move, from the agent's start of the
    deployment to the end of stopping-old (the old release has drained and exited)."""
    spans = []
    for e in report["events"]:
        edges = step_edges(e)
        if edges:
            spans.append((e["agent_started"], dict((n, b) for n, _, b in edges)["stopping-old"]))
    return spans


def co_corrected(lat: list[int], interval_us: float, bucket_us: int = 10) -> tuple[int, int] | None:
    """p50 and p99 (microseconds, to bucket_us) after correcting for coordinated omission, the way
    wrk corrects its own summary and HdrHistogram's recordValueWithExpectedInterval does: a
    closed-loop client that waited L on one request did not send the requests it would have sent
    meanwhile, one every interval_us, so for each L the values L - interval_us, L - 2 interval_us,
    ... down to interval_us are counted too."""
    if not lat:
        return None
    hist: dict[int, int] = {}
    step = max(1, int(interval_us))
    for v in lat:
        hist[v // bucket_us] = hist.get(v // bucket_us, 0) + 1
        v -= step
        while v >= step:
            hist[v // bucket_us] = hist.get(v // bucket_us, 0) + 1
            v -= step
    keys = sorted(hist)
    total = sum(hist.values())
    result = []
    for q in (50, 99):
        rank, seen = math.ceil(q / 100 * total), 0
        for b in keys:
            seen += hist[b]
            if seen >= rank:
                result.append(b * bucket_us)
                break
    return result[0], result[1]


def analyse_load(report: dict) -> dict:
    windows = {"inside": Windows([(e["t0"], e["t1"]) for e in report["events"]])}
    if report["mode"] == "switch" and core_spans(report):
        windows["core"] = Windows(core_spans(report))
    lo, hi = int(report["measure_start"] * 1e6), int(report["measure_end"] * 1e6)
    groups = {w: {"requests": 0, "failed_attempts": 0, "non_2xx": 0, "slow": 0, "retried": 0, "lat": []}
              for w in ("outside", *windows)}
    attempts = 0
    for conn in read_connections(Path(report["log_dir"])):
        for begin, end, status, fails in logical_requests(conn):
            if not lo <= begin <= hi:
                continue
            attempts += fails + (status != -1)
            names = [w for w in windows if windows[w].overlaps(begin, end)]
            if "inside" not in names:
                names = ["outside"]
            for name in names:
                g = groups[name]
                g["failed_attempts"] += fails
                if status == -1:
                    continue
                g["requests"] += 1
                g["retried"] += fails > 0
                if not 200 <= status < 300:
                    g["non_2xx"] += 1
                if end - begin > WRK_TIMEOUT_SEC * 1e6:
                    g["slow"] += 1
                g["lat"].append(end - begin)
    # A connection's usual time per request outside the windows: the interval for the
    # coordinated-omission correction.
    outside_sec = (hi - lo) / 1e6 - sum(b - a for a, b in windows["inside"].spans) / 1e6
    n_conn = int(report["wrk_command"][report["wrk_command"].index("-c") + 1])
    interval_us = (n_conn * outside_sec * 1e6 / groups["outside"]["requests"]) if groups["outside"]["requests"] else None
    out = {}
    for name, g in groups.items():
        lat = sorted(g.pop("lat"))
        g["failed"] = g["failed_attempts"] + g["non_2xx"] + g["slow"]
        g.update({f"{k}_ms": (v / 1000 if v is not None else None)
                  for k, v in (("p50", percentile(lat, 50)), ("p99", percentile(lat, 99)),
                               ("max", lat[-1] if lat else None))})
        co = co_corrected(lat, interval_us) if interval_us else None
        g["co_p50_ms"], g["co_p99_ms"] = (co[0] / 1000, co[1] / 1000) if co else (None, None)
        for key in ("p99", "co_p99"):
            mine, theirs = g[f"{key}_ms"], groups["outside"].get(f"{key}_ms")
            if name != "outside":
                g[f"{key}_ratio"] = (mine / theirs) if mine and theirs else None
        out[name] = g
    total = out["inside"]["requests"] + out["outside"]["requests"]
    seconds = (hi - lo) / 1e6
    wrk = report.get("wrk_summary") or {}
    return {
        "windows": out,
        "p99_ratio": out["inside"]["p99_ratio"],
        "co_interval_ms": interval_us / 1000 if interval_us else None,
        "attempts": attempts,
        "requests": total,
        "failed": out["inside"]["failed"] + out["outside"]["failed"],
        "failed_attempts": out["inside"]["failed_attempts"] + out["outside"]["failed_attempts"],
        "retried": out["inside"]["retried"] + out["outside"]["retried"],
        "requests_per_sec": total / seconds,
        "measured_sec": seconds,
        "window_sec": sum(b - a for a, b in windows["inside"].spans) / 1e6,
        "core_window_sec": (sum(b - a for a, b in windows["core"].spans) / 1e6) if "core" in windows else None,
        "cpu_busy": report.get("cpu_busy"),
        "wrk": {"requests": wrk.get("requests"), "errors": wrk.get("errors"),
                "latency_us": wrk.get("latency_us")},
    }


STEP_SPANS = ("bloomctl start", "starting", "checking", "stopping-old", "pointing", "probation", "blessing+exit")


def slow_by_step(report: dict, threshold_ms: float = 50) -> dict | None:
    """Where in the switches the slow requests (> threshold_ms) begin: per step, how many per
    second and how many seconds of waiting per second, against the same outside the windows."""
    bounds = [step_edges(e) for e in report["events"]]
    if not bounds or any(b is None for b in bounds):
        return None
    bounds = [[b[0][1], *(end for _, _, end in b)] for b in bounds]  # t0, then each span's end
    starts = [b[0] for b in bounds]
    lo, hi = report["measure_start"], report["measure_end"]
    seconds = dict.fromkeys(("outside", *STEP_SPANS), 0.0)
    for b in bounds:
        for i, name in enumerate(STEP_SPANS):
            seconds[name] += max(0.0, b[i + 1] - b[i])
    seconds["outside"] = (hi - lo) - sum(b[-1] - b[0] for b in bounds)
    count = dict.fromkeys(seconds, 0)
    waited = dict.fromkeys(seconds, 0.0)
    for conn in read_connections(Path(report["log_dir"])):
        for begin, end, status, _ in logical_requests(conn):
            latency = (end - begin) / 1e6
            t = begin / 1e6
            if latency * 1000 <= threshold_ms or not lo <= t <= hi:
                continue
            where = "outside"
            i = bisect.bisect_right(starts, t) - 1
            if i >= 0 and t <= bounds[i][-1]:
                j = bisect.bisect_right(bounds[i], t) - 1
                where = STEP_SPANS[min(max(j, 0), len(STEP_SPANS) - 1)]
            count[where] += 1
            waited[where] += latency
    return {name: {"seconds": seconds[name], "slow": count[name],
                   "slow_per_sec": count[name] / seconds[name] if seconds[name] else None,
                   "waited_per_sec": waited[name] / seconds[name] if seconds[name] else None}
            for name in seconds} | {"threshold_ms": threshold_ms}


# The time split of a switch (seconds). The agent's overhead is what is left of bloomctl's wall
# time after the app's start-up to READY, daemon-reload (systemd's work, its own line), the drain of
# the old release, the configured probation and the client's own start-up; the rows marked "of it"
# add up to it exactly (from the agent's own timestamps).
SPLIT_KEYS = ("wall", "client", "starting", "daemon-reload", "stopping-old", "probation_cfg", "overhead",
              "before_steps", "checking", "pointing_no_reload", "probation_excess", "blessing", "between_steps",
              "after_steps", "agent_steps", "old_overhead")


def analyse_switches(report: dict, probation_cfg: float, client_sec: float | None) -> dict:
    rows = []
    for e in report["events"]:
        t = (e.get("result") or {}).get("timings") or {}
        wall = e["t1"] - e["t0"]
        row = {"wall": wall, **{s: t.get(s) for s in SWITCH_STEPS}}
        reload = t.get("daemon-reload") or 0.0
        row["daemon-reload"] = reload
        if all(t.get(s) is not None for s in ("starting", "checking", "stopping-old", "pointing", "probation",
                                                "blessing")):
            row["probation_cfg"] = probation_cfg
            row["client"] = client_sec
            row["pointing_no_reload"] = t["pointing"] - reload
            row["probation_excess"] = t["probation"] - probation_cfg
            # the definition of the earlier runs, for comparison: wall - starting - drain - probation
            row["old_overhead"] = wall - t["starting"] - t["stopping-old"] - t["probation"]
            if client_sec is not None:
                row["overhead"] = wall - client_sec - t["starting"] - reload - t["stopping-old"] - probation_cfg
            if "agent_started" in e:
                steps = sum(t[s] for s in ("starting", "checking", "stopping-old", "pointing", "probation", "blessing"))
                row["before_steps"] = e["agent_started"] - e["t0"] - (client_sec or 0)
                row["after_steps"] = e["t1"] - e["agent_finished"]
                row["between_steps"] = e["agent_finished"] - e["agent_started"] - steps
                row["agent_steps"] = (t["checking"] + row["pointing_no_reload"] + row["probation_excess"]
                                      + t["blessing"] + row["between_steps"])
        rows.append(row)
    return {
        "outcomes": [((e.get("result") or {}).get("outcome"), e["rc"]) for e in report["events"]],
        "served_ok": sum(e["served"] == e["version"] for e in report["events"]),
        "has_timings": any((e.get("result") or {}).get("timings") for e in report["events"]),
        "client_sec": report.get("client_sec"),
        "agent_memory_kb": report.get("agent_memory_kb"),
        "per_switch": rows,
        "stats": {k: stats([r.get(k) for r in rows]) for k in SPLIT_KEYS},
    }


def analyse_restarts(report: dict) -> dict:
    rows = [{"wall": e["t1"] - e["t0"], **(e.get("result") or {}).get("timings", {})} for e in report["events"]]
    return {
        "outcomes": [e["rc"] for e in report["events"]],
        "served_ok": sum(e["served"] == e["version"] for e in report["events"]),
        "per_restart": rows,
        "stats": {k: stats([r.get(k) for r in rows]) for k in ("wall", "starting", "stopping")},
    }


# ---------------------------------------------------------------------------------- printing


def print_report(res: dict) -> None:
    cfg, info = res["config"], res["machine"]
    print()
    print(f"machine: {info.get('cpus')} CPUs ({info.get('cpu_model')}), kernel {info.get('kernel')}, "
          f"{info.get('systemd')}, Debian {info.get('debian')}, nspawn container")
    print(f"load: {info.get('wrk')} -t{cfg['connections']} -c{cfg['connections']} (one connection per thread, "
          f"closed loop, keep-alive, GET /), reqlog.lua; pause {cfg['pause']:g} s between deploys; "
          f"probation_sec {cfg['probation']:g}")
    print()
    print("Requests that began in the measured period. inside: overlapping a deploy window (the bloomctl or "
          "systemctl call);")
    print("start..drain: overlapping the part of a switch from its start to the old release's exit. failed: "
          "attempts without a")
    print("2xx (wrk retries a failed request at once); hit: requests with a failed attempt. Latency: from the "
          "end of the")
    print("previous request on the connection to the 2xx response, so reconnections and retries count.")
    head = (f"{'':22} {'window':12} {'requests':>9} {'failed':>7} {'hit':>5} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>9} {'p99 vs out':>10}")
    print(head)
    print("-" * len(head))
    for name, label in (("switch", f"bloomctl switch x{cfg['switches']}"),
                        ("restart", f"systemctl restart x{cfg['restarts']}")):
        if name not in res["load"]:
            continue
        load = res["load"][name]
        for i, w in enumerate(w for w in ("outside", "inside", "core") if w in load["windows"]):
            g = load["windows"][w]
            ratio = fmt(g.get("p99_ratio"), "x", 2) if w != "outside" else ""
            label_w = "start..drain" if w == "core" else w
            print(f"{label if i == 0 else '':22} {label_w:12} {g['requests']:>9} {g['failed']:>7} {g['retried']:>5} "
                  f"{fmt(g['p50_ms'], digits=2):>8} {fmt(g['p99_ms'], digits=2):>8} {fmt(g['max_ms'], digits=1):>9} "
                  f"{ratio:>10}")
    print()
    print("The same latencies corrected for coordinated omission (as wrk corrects its own summary): a request "
          "that took L")
    print("also stands for the requests the connection would have sent meanwhile, one per usual interval "
          "(per connection,")
    print("outside windows).")
    head = f"{'':22} {'window':12} {'interval':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99 vs out':>10}"
    print(head)
    print("-" * len(head))
    for name, label in (("switch", f"bloomctl switch x{cfg['switches']}"),
                        ("restart", f"systemctl restart x{cfg['restarts']}")):
        if name not in res["load"]:
            continue
        load = res["load"][name]
        for i, w in enumerate(w for w in ("outside", "inside", "core") if w in load["windows"]):
            g = load["windows"][w]
            ratio = fmt(g.get("co_p99_ratio"), "x", 2) if w != "outside" else ""
            interval = fmt(load["co_interval_ms"], " ms", 2) if i == 0 else ""
            print(f"{label if i == 0 else '':22} {'start..drain' if w == 'core' else w:12} {interval:>9} "
                  f"{fmt(g['co_p50_ms'], digits=2):>8} {fmt(g['co_p99_ms'], digits=2):>8} {ratio:>10}")
    print()
    for name in ("switch", "restart"):
        if name not in res["load"]:
            continue
        load = res["load"][name]
        e = load["wrk"]["errors"] or {}
        print(f"{name}: {load['requests']} requests in {load['measured_sec']:.1f} s "
              f"({load['requests_per_sec']:.0f}/s; {load['window_sec']:.1f} s inside windows), "
              f"CPU busy {fmt((load['cpu_busy'] or 0) * 100, '%', 0)} of all cores; "
              f"failed attempts {load['failed_attempts']}, requests retried {load['retried']}; "
              f"wrk's counters for the whole run: connect {e.get('connect')}, read {e.get('read')}, "
              f"write {e.get('write')}, timeout {e.get('timeout')}, non-2xx/3xx {e.get('status')}")
    sbs = res["load"].get("switch", {}).get("slow_by_step")
    if sbs:
        print()
        print(f"Where the slow requests (> {sbs['threshold_ms']:g} ms) of the switch phase begin: per second of each "
              "span, how many, and the seconds")
        print("of waiting they add up to (all connections together)")
        print(f"  {'span':16} {'seconds':>8} {'slow':>6} {'slow/s':>7} {'waited/s':>9}")
        for name in ("outside", *STEP_SPANS):
            row = sbs[name]
            print(f"  {name:16} {row['seconds']:8.1f} {row['slow']:6} {fmt(row['slow_per_sec'], digits=1):>7} "
                  f"{fmt(row['waited_per_sec'], digits=2):>9}")
    if "switch" in res["deploys"] or "idle" in res["deploys"]:
        cols = [c for c in ("switch", "idle") if c in res["deploys"]]
        print()
        for c in cols:
            d = res["deploys"][c]
            print(f"Switch time split, {'under load' if c == 'switch' else 'idle machine (no load)'}: "
                  f"{len(d['per_switch'])} switches, outcomes {sorted(set(str(o) for o in d['outcomes']))}, "
                  f"new version served after {d['served_ok']}"
                  + ("" if d["has_timings"] else "; bloomctl printed no 'timings': only wall time known"))
            mem = d.get("agent_memory_kb") or [None, None]
            if mem[0] and mem[1]:
                print(f"  agent memory before / after the phase: RSS {mem[0]['VmRSS'] / 1024:.1f} / "
                      f"{mem[1]['VmRSS'] / 1024:.1f} MB, anonymous {mem[0]['RssAnon'] / 1024:.1f} / "
                      f"{mem[1]['RssAnon'] / 1024:.1f} MB")
            cl = d.get("client_sec") or {}
            if cl:
                print(f"  client alone, {len(cl['version'])} runs each: bloomctl --version median "
                      f"{ms(stats(cl['version'])['median'])} ms (max {ms(stats(cl['version'])['max'])}), "
                      f"bloomctl status median {ms(stats(cl['status'])['median'])} ms "
                      f"(max {ms(stats(cl['status'])['max'])})")
        rows = (("bloomctl switch call, wall time", "wall"),
                ("app start-up to READY (starting)", "starting"),
                ("daemon-reload (in pointing)", "daemon-reload"),
                ("drain of the old release (stopping-old)", "stopping-old"),
                ("probation (configured)", "probation_cfg"),
                ("bloomctl client start-up (median of --version)", "client"),
                ("AGENT OVERHEAD: wall minus the five above", "overhead"),
                ("  of it, request until the agent begins the switch", "before_steps"),
                ("  of it, checking", "checking"),
                ("  of it, pointing without daemon-reload", "pointing_no_reload"),
                ("  of it, probation beyond probation_sec", "probation_excess"),
                ("  of it, blessing", "blessing"),
                ("  of it, between steps (state records)", "between_steps"),
                ("  of it, agent's end of the switch until bloomctl exits", "after_steps"),
                ("agent's own steps (checking .. between steps above)", "agent_steps"),
                ("earlier definition: wall - starting - drain - probation", "old_overhead"))
        head = "".join(f" {'load med':>9} {'load max':>9}" if c == "switch" else f" {'idle med':>9} {'idle max':>9}"
                       for c in cols)
        print(f"  {'seconds':56}{head}")
        for label, key in rows:
            cells = "".join(f" {fmt(res['deploys'][c]['stats'][key]['median'], digits=4):>9}"
                            f" {fmt(res['deploys'][c]['stats'][key]['max'], digits=4):>9}" for c in cols)
            print(f"  {label:56}{cells}")
    if "restart" in res["deploys"]:
        rs = res["deploys"]["restart"]
        s = rs["stats"]
        print()
        print(f"Restart time split, under load: {len(rs['per_restart'])} restarts, systemd's timestamps, "
              f"new version served after {rs['served_ok']}")
        print(f"  {'seconds':56} {'load med':>9} {'load max':>9}")
        for label, key in (("stop: drain of the old process", "stopping"),
                           ("start-up to READY", "starting"),
                           ("systemctl restart call, wall time", "wall")):
            print(f"  {label:56} {fmt(s[key]['median'], digits=4):>9} {fmt(s[key]['max'], digits=4):>9}")
    print()
    others = {k: v["before"] for k, v in res["neighbours"].items()}
    print("other machines on this host at the start of each phase (they share its CPUs): "
          + ", ".join(f"{k}: {v['nspawn']} nspawn, {v['qemu']} qemu" for k, v in others.items()))
    print()
    print("Targets")
    for t in res["targets"]:
        print(f"  [{'met' if t['met'] else 'NOT met' if t['met'] is False else 'unknown'}] {t['target']}: {t['value']}")


def targets(res: dict) -> list[dict]:
    out = []
    sw = res["load"].get("switch")
    if sw:
        out.append({"target": "0 failed requests during switches", "value": f"{sw['failed']} failed",
                    "met": sw["failed"] == 0})
        ratio = sw["p99_ratio"]
        inside, core = sw["windows"]["inside"], sw["windows"].get("core", {})
        out.append({"target": "p99 inside switch windows <= 1.2x p99 outside",
                    "value": f"{fmt(ratio, 'x', 2)} ({fmt(inside['p99_ms'], ' ms', 2)} vs "
                             f"{fmt(sw['windows']['outside']['p99_ms'], ' ms', 2)}); start..drain only: "
                             f"{fmt(core.get('p99_ratio'), 'x', 2)}; corrected for coordinated omission: "
                             f"{fmt(inside.get('co_p99_ratio'), 'x', 2)}, start..drain {fmt(core.get('co_p99_ratio'), 'x', 2)}",
                    "met": None if ratio is None else ratio <= 1.2})
    d = res["deploys"].get("switch")
    idle = res["deploys"].get("idle")
    if d:
        for key, target in (("overhead", "agent overhead <= 100 ms per switch (wall - start-up to READY - "
                                         "daemon-reload - drain - probation - client start-up)"),
                            ("agent_steps", "agent's own steps <= 100 ms per switch (checking + pointing w/o "
                                            "daemon-reload + probation beyond probation_sec + blessing + between "
                                            "steps)")):
            st = d["stats"][key]
            value = f"under load: median {ms(st['median'])} ms, max {ms(st['max'])} ms"
            if idle:
                value += f"; idle: median {ms(idle['stats'][key]['median'])} ms, max {ms(idle['stats'][key]['max'])} ms"
            out.append({"target": target, "value": value, "met": None if st["max"] is None else st["max"] <= 0.1})
    return out


# -------------------------------------------------------------------------------------- main


PHASES = ("idle", "switch", "restart")


def results(meta: dict, reports: dict) -> dict:
    res = {**meta, "load": {}, "deploys": {}}
    for name, r in reports.items():
        if r["load"]:
            res["load"][name] = analyse_load(r)
            if r["mode"] == "switch":
                res["load"][name]["slow_by_step"] = slow_by_step(r)
            res["load"][name]["wrk_output"] = r["wrk_output"]
    for name in ("idle", "switch"):
        if name in reports:
            client = reports[name].get("client_sec")
            client_median = stats(client["version"])["median"] if client else meta["machine"].get("bloomctl_version_sec")
            res["deploys"][name] = analyse_switches(reports[name], meta["config"]["probation"], client_median)
    if "restart" in reports:
        res["deploys"]["restart"] = analyse_restarts(reports["restart"])
    res["targets"] = targets(res)
    return res


def saved_reports(work: Path) -> dict:
    reports = {}
    for name in PHASES:
        if (work / name / "drive.json").exists():
            reports[name] = json.loads((work / name / "drive.json").read_text())
            reports[name]["log_dir"] = str(work / name)
    return reports


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switches", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--idle-switches", type=int, default=5, help="switches without load first, for reference")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (= wrk threads)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds of load before each deploy and after the last")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--probation", type=float, default=1.0, help="probation_sec of the app")
    ap.add_argument("--deb", type=Path, help="default: the newest dist/bloom-agent_*_all.deb")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument("--keep-logs", type=Path, help="keep the per-request logs in this directory")
    ap.add_argument("--analyse", type=Path, metavar="DIR",
                    help="no run: analyse again what an earlier run kept with --keep-logs DIR")
    args = ap.parse_args(argv)

    if args.analyse:
        work = args.analyse.resolve()
        res = results(json.loads((work / "meta.json").read_text()), saved_reports(work))
        print_report(res)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        return 0

    check_host()
    deb = (args.deb or newest_deb()).resolve()
    work = args.keep_logs.resolve() if args.keep_logs else Path(tempfile.mkdtemp(prefix="bloom-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    started = time.time()
    git = git_describe()  # the tree as the run starts (others may commit while it runs)
    deb_sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
    with machine() as m:
        info = prepare(m, deb, work, args.probation)
        reports = {}
        if args.idle_switches:
            reports["idle"] = run_phase(m, "switch", args.idle_switches, args, work, load=False, name="idle")
        if args.switches:
            reports["switch"] = run_phase(m, "switch", args.switches, args, work)
        if args.restarts:
            reports["restart"] = run_phase(m, "restart", args.restarts, args, work)

    meta = {
        "config": {"switches": args.switches, "restarts": args.restarts, "connections": args.connections,
                   "pause": args.pause, "warmup": args.warmup, "probation": args.probation,
                   "deb": deb.name, "wrk_timeout_sec": WRK_TIMEOUT_SEC,
                   "idle_switches": args.idle_switches,
                   "command": shlex.join([sys.executable, *sys.argv]), "host": platform.node(),
                   "git": git, "deb_sha256": deb_sha256},
        "machine": info,
        "neighbours": {k: r["neighbours"] for k, r in reports.items()},
        "loadavg": {k: r["loadavg"] for k, r in reports.items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_sec": time.time() - started,
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    res = results(meta, reports)
    print_report(res)
    finish(work, res, args.json, bool(args.keep_logs), started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
