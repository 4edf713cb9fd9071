#!/usr/bin/python3
"""Benchmark: how fast bloom-agent rolls back a release that misbehaves in probation, under load.

    /usr/bin/python3 bench/rollback_bench.py [--reps 5] [--connections 50] [--pause 2]
                                             [--sigterm-watchdog-reps 3] [--json OUT] [--keep-logs DIR]

Run as root on a Debian 12 host that can run the integration tests (make deps; make deb first).
It boots a throw-away systemd machine with tests/machine.py, installs the newest
dist/bloom-agent_*_all.deb, declares the app ``web`` (the sample app on 127.0.0.1:8080, with
watchdog_sec = 2, max_error_rate_per_minute = 20 and an HTTP health check every 0.5 s, 3 failures),
deploys a healthy 1.0.0 and installs faulty releases, one per trigger and repetition:

  crash        crash_after_sec = 1          (exit 1 one second after READY=1)
  watchdog     stop_watchdog_after_sec = 1  (no more WATCHDOG=1 one second after READY=1)
  error-flood  error_log_per_sec = 10       (the 21st error crosses 20/min about 2 s after READY=1)
  health       fail_health                  (/health answers 500 from the start)

Then, with wrk at saturation on web (bench/reqlog.lua logs every request), it runs
``bloomctl switch web V --json`` to each faulty release in turn (the triggers interleaved),
PAUSE seconds apart. Each one must end rolled back to 1.0.0. From the machine's journal and the
agent's step records it times, per rollback, fault onset -> the agent's verdict -> the previous
release READY again -> the faulty release stopped (the previous one serving alone), and from the
request log, the requests that failed meanwhile.

A second phase (--sigterm-watchdog-reps, 0 to skip) repeats the watchdog trigger with a drop-in
``WatchdogSignal=SIGTERM`` for web@.service: not what the agent ships, an experiment on whether a
missed watchdog has to cost the connections the process held. See docs/benchmarks.md.
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

from common import (REMOTE, Windows, check_host, fetch_dir, finish, fmt, git_describe, install_agent, journal,
                    logical_requests, machine, machine_facts, ms, neighbours, newest_deb, percentile, put_release,
                    read_connections, run, say, stats, write)

APP, PORT, GOOD = "web", 8080, "1.0.0"
WATCHDOG_SEC, MAX_ERRORS, CHECK_INTERVAL, CHECK_FAILURES = 2, 20, 0.5, 3
WRK_TIMEOUT_SEC = 5

APP_FILE = f"""\
listen = ["127.0.0.1:{PORT}"]
exec = "bin/sampleapp"
probation_sec = {{probation}}
ready_timeout_sec = 10
stop_timeout_sec = 10
keep_releases = 100
watchdog_sec = {WATCHDOG_SEC}
max_error_rate_per_minute = {MAX_ERRORS}

[[health_check]]
type = "http"
interval_sec = {CHECK_INTERVAL}
failures = {CHECK_FAILURES}
"""

# trigger -> (faults, minor version); releases are 2.MINOR.REP
TRIGGERS = {
    "crash": ({"crash_after_sec": 1}, 1),
    "watchdog": ({"stop_watchdog_after_sec": 1}, 2),
    "error-flood": ({"error_log_per_sec": 10}, 3),
    "health": ({"fail_health": True}, 4),
}
SIGTERM_DROPIN = f"/etc/systemd/system/{APP}@.service.d/90-bench-watchdog-signal.conf"

# systemd's catalogue message ids
STARTED, STOPPING, STOPPED = ("39f53479d3a045ac8e11786248231fbf", "de5b426a63be47a7b6ac3eaac82e2f6f",
                              "9d1aaa27d60140bd96365438aad20286")


def unit(version: str) -> str:
    return f"{APP}@{version}.service"


# ------------------------------------------------------------------------------------- run


def prepare(m, deb: Path, work: Path, args) -> tuple[dict, dict]:
    install_agent(m, deb)
    write(m, f"/etc/bloom/apps/{APP}.toml", APP_FILE.format(probation=args.probation))
    run(m, ["bloomctl", "reload"])
    plan = {}  # version -> trigger
    for rep in range(1, args.reps + 1):
        for trigger, (_, minor) in TRIGGERS.items():
            plan[f"2.{minor}.{rep}"] = trigger
    for rep in range(1, args.sigterm_watchdog_reps + 1):
        plan[f"2.9.{rep}"] = "watchdog"
    say(f"building and installing {GOOD} and {len(plan)} faulty releases")
    for version in (GOOD, *plan):
        faults = TRIGGERS[plan[version]][0] if version in plan else None
        remote = put_release(m, work, version, faults)
        run(m, ["bloomctl", "install", APP, remote])
    say(f"deploying {APP} {GOOD} (probation {args.probation:g} s)")
    run(m, ["bloomctl", "switch", APP, GOOD])
    run(m, ["curl", "-fsS", "--max-time", "5", f"http://127.0.0.1:{PORT}/"])
    return machine_facts(m), plan


def run_phase(m, name: str, versions: list[str], args, work: Path) -> dict:
    log_dir = f"/root/bench-logs/{name}"
    out = f"/root/bench-{name}.json"
    cmd = ["/usr/bin/python3", f"{REMOTE}/drive.py", "--mode", "switch", "--url", f"http://127.0.0.1:{PORT}/",
           "--versions", GOOD, "--sequence", ",".join(versions), "--pause", str(args.pause),
           "--warmup", str(args.warmup), "--connections", str(args.connections),
           "--timeout", f"{WRK_TIMEOUT_SEC}s", "--log-dir", log_dir, "--out", out, "--app", APP]
    say(f"{name}: {len(versions)} faulty releases under wrk -t{args.connections} -c{args.connections}, "
        f"{args.pause:g} s apart (about {args.warmup + len(versions) * (args.pause + 7):.0f} s)")
    before = neighbours()
    since = float(run(m, ["date", "+%s.%N"]).strip())
    proc = m.run(cmd, timeout=3600)
    after = neighbours()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} phase failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    local = work / name
    fetch_dir(m, log_dir, local, f"bench-{name}")
    m.get(out, local / "drive.json")
    entries = journal(m, int(since) - 1)
    (local / "journal.json").write_text(json.dumps(entries) + "\n")
    report = json.loads((local / "drive.json").read_text())
    report["log_dir"] = str(local)
    report["journal"] = str(local / "journal.json")
    report["neighbours"] = {"before": before, "after": after}
    return report


# -------------------------------------------------------------------------------- analysis


def first(entries, after: float, before: float | None = None, **match) -> dict | None:
    for e in entries:
        if e["t"] < after or (before is not None and e["t"] > before):
            continue
        if all(callable(v) and v(e.get(k)) or e.get(k) == v for k, v in match.items()):
            return e
    return None


def text(fragment: str):
    return lambda message: isinstance(message, str) and fragment in message


def timeline(e: dict, trigger: str, entries: list[dict], probation_cfg: float) -> dict:
    """One rollback's moments (time.time() values) and the spans the targets are about."""
    new, old = unit(e["version"]), unit(GOOD)
    steps = {step: at for at, step in e.get("steps") or []}
    t = (e.get("result") or {}).get("timings") or {}
    lo, hi = e["t0"] - 0.5, e["t1"] + 5
    mine = [x for x in entries if lo <= x["t"] <= hi]
    about_new = [x for x in mine if x.get("UNIT") == new]
    from_new = [x for x in mine if x.get("_SYSTEMD_UNIT") == new]
    row = {"version": e["version"], "trigger": trigger, "rc": e["rc"],
           "outcome": (e.get("result") or {}).get("outcome"), "reason": (e.get("result") or {}).get("reason"),
           "served_after": e.get("served")}
    started = first(about_new, lo, MESSAGE_ID=STARTED)
    # READY: journald stamps a message when it receives it, a little after systemd saw READY=1; the agent
    # records "checking" once the start job is done, also a little after. The earlier of the two.
    ready = min([x for x in (started and started["t"], steps.get("checking")) if x], default=None)
    verdict = steps.get("rolling-back")
    agent_done = steps.get("rolled-back") or e.get("agent_finished")
    row["moments"] = m = {
        "switch_called": e["t0"], "new_ready": ready, "probation_began": steps.get("probation"),
        "verdict": verdict, "agent_done": agent_done, "bloomctl_exit": e["t1"]}
    if verdict is None or ready is None:
        return row
    # the way back: the previous release READY again, the faulty one stopped for good
    old_ready = first([x for x in mine if x.get("UNIT") == old], verdict, MESSAGE_ID=STARTED)
    m["old_ready"] = old_ready and old_ready["t"]
    stopping = first(about_new, verdict, agent_done, MESSAGE_ID=STOPPING)
    m["new_stopping"] = stopping and stopping["t"]
    stops = [x["t"] for x in about_new if x.get("MESSAGE_ID") == STOPPED and verdict <= x["t"] <= agent_done + 1]
    # the unit's last "Stopped" (a restart logs one too); the agent's stop job has finished before it records
    # its end, so that bounds it as well
    m["new_unit_stopped"] = min(stops[-1], agent_done) if stops else agent_done
    # when NEW's processes could accept: from READY to each death, again from each restart's READY
    deaths = [x["t"] for x in about_new if text("Main process exited")(x.get("MESSAGE")) and x["t"] >= ready]
    # a main process that exits 0 (drained after SIGTERM) gets no "Main process exited"; the unit's failure
    # says it is gone
    failed = [x["t"] for x in about_new if text("Failed with result")(x.get("MESSAGE")) and x["t"] >= ready]
    ends = sorted(deaths + [f for f in failed if not any(0 <= f - d < 0.2 for d in deaths)])
    restarts = [x["t"] for x in about_new if x.get("MESSAGE_ID") == STARTED and ends and x["t"] > ends[0]]
    m["new_deaths"], m["new_ends"], m["new_restarted"] = deaths, ends, restarts
    m["restart_scheduled"] = [x["t"] for x in about_new if text("Scheduled restart job")(x.get("MESSAGE"))]
    alive_until = m["new_unit_stopped"]
    gone = [x for x in ends if x <= m["new_unit_stopped"]]
    if gone and not any(r > gone[-1] for r in restarts):
        alive_until = gone[-1]
    m["new_alive_until"] = alive_until
    # the previous release serving alone: it is READY and no process of NEW can accept any more
    m["old_alone"] = max(m["old_ready"], alive_until) if m["old_ready"] else None
    # fault onset
    faults = TRIGGERS[trigger][0]
    if trigger == "crash" and ready:
        m["onset"] = ready + faults["crash_after_sec"]
        crash = first(from_new, lo, MESSAGE=text("fault crash_after_sec"))
        m["app_says_crashing"] = crash and crash["t"]
    elif trigger == "watchdog" and ready:
        m["onset"] = ready + faults["stop_watchdog_after_sec"]
        wd = first(about_new, lo, MESSAGE=text("Watchdog timeout"))
        m["systemd_watchdog_timeout"] = wd and wd["t"]
        said = first(from_new, lo, MESSAGE=text("no more WATCHDOG=1"))
        m["app_stops_pinging"] = said and said["t"]
    elif trigger == "error-flood":
        # what the journal monitor counts: priority err or worse, from the unit or about it, since the switch began
        errors = [x for x in mine if (x.get("_SYSTEMD_UNIT") == new or x.get("UNIT") == new)
                  and x.get("PRIORITY") is not None and int(x["PRIORITY"]) <= 3
                  and x["t"] >= (e.get("agent_started") or e["t0"]) - 0.001]
        m["errors_seen"] = len([x for x in errors if x["t"] <= verdict])
        m["onset"] = errors[MAX_ERRORS]["t"] if len(errors) > MAX_ERRORS else None
    elif trigger == "health":
        fails = [x for x in mine if x.get("_SYSTEMD_UNIT") == "bloom-agent.service"
                 and text(f"{new}: http#0 failed")(x.get("MESSAGE"))]
        m["check_failures"] = [x["t"] for x in fails]
        # the fault is there from the start; the checks begin with probation, and the threshold is crossed at
        # the CHECK_FAILURES-th failure in a row
        m["onset"] = fails[CHECK_FAILURES - 1]["t"] if len(fails) >= CHECK_FAILURES else None
    onset = m.get("onset")
    span = {}

    def d(a, b):
        return (b - a) if a is not None and b is not None else None

    span["ready_to_probation"] = d(ready, m["probation_began"])
    span["onset_to_verdict"] = d(onset, verdict)
    span["verdict_to_old_ready"] = d(verdict, m["old_ready"])
    span["old_ready_to_new_stopped"] = d(m["old_ready"], m["new_unit_stopped"])
    span["new_drain"] = d(m["new_stopping"], m["new_unit_stopped"])
    span["rolling_back_step"] = t.get("rolling-back")
    if t.get("daemon-reload") is not None and t.get("pointing") is not None:
        # both reloads are added up in "daemon-reload"; pointing holds only the first (plus a file write)
        span["reload_in_rollback"] = t["daemon-reload"] - t["pointing"]
    span["onset_to_old_ready"] = d(onset, m["old_ready"])
    span["onset_to_alone"] = d(onset, m["old_alone"])
    span["onset_to_new_stopped"] = d(onset, m["new_unit_stopped"])
    span["onset_to_agent_done"] = d(onset, agent_done)
    if trigger == "health":
        span["probation_to_threshold"] = d(m["probation_began"], onset)
        span["probation_to_alone"] = d(m["probation_began"], m["old_alone"])
    if trigger == "watchdog":
        span["onset_to_systemd_timeout"] = d(onset, m.get("systemd_watchdog_timeout"))
    if deaths:
        # nothing accepting: from the death until the previous release (or a restart of the faulty one) is READY
        back = min([x for x in [m["old_ready"], *restarts] if x and x > deaths[0]], default=None)
        span["nobody_serving"] = d(deaths[0], back)
        span["onset_to_death"] = d(onset, deaths[0])
    row["spans"] = span
    return row


def requests_in_windows(report: dict, rows: list[dict]) -> dict:
    """Per rollback window (the bloomctl call), the requests, failed attempts and latencies; failed attempts
    split into those in flight on the faulty process when it died and the others."""
    events = report["events"]
    win = Windows([(e["t0"], e["t1"]) for e in events])
    deaths = [[int(t * 1e6) for t in (r["moments"].get("new_deaths") or [])] for r in rows]
    lo, hi = int(report["measure_start"] * 1e6), int(report["measure_end"] * 1e6)
    per = [{"requests": 0, "failed_attempts": 0, "failed_at_death": 0, "failed_other": 0, "hit": 0,
            "non_2xx": 0, "lat": []} for _ in events]
    outside = []
    slack = 50_000  # µs: systemd logs the exit a little after the kernel closed the process's sockets
    for conn in read_connections(Path(report["log_dir"])):
        for start, status, latency, _ in conn:
            if status != -1 or not lo <= start <= hi:
                continue
            i = win.find(start, start + latency)
            if i is None:
                continue
            at_death = any(start - slack <= dt and start + latency >= dt - slack for dt in deaths[i])
            per[i]["failed_attempts"] += 1
            per[i]["failed_at_death" if at_death else "failed_other"] += 1
        for begin, end, status, fails in logical_requests(conn):
            if not lo <= begin <= hi:
                continue
            i = win.find(begin, end)
            if i is None:
                if status != -1:
                    outside.append(end - begin)
                continue
            if status == -1:
                continue
            g = per[i]
            g["requests"] += 1
            g["hit"] += fails > 0
            g["non_2xx"] += not 200 <= status < 300
            g["lat"].append(end - begin)
    outside.sort()
    return {"per_window": per, "outside_p99_ms": percentile(outside, 99) / 1000 if outside else None,
            "outside_max_ms": outside[-1] / 1000 if outside else None, "outside_requests": len(outside)}


def analyse(report: dict, plan: dict, probation_cfg: float) -> dict:
    entries = json.loads(Path(report["journal"]).read_text())
    rows = [timeline(e, plan[e["version"]], entries, probation_cfg) for e in report["events"]]
    req = requests_in_windows(report, rows)
    for row, g in zip(rows, req["per_window"]):
        lat = sorted(g.pop("lat"))
        g["p99_ms"] = percentile(lat, 99) / 1000 if lat else None
        g["max_ms"] = lat[-1] / 1000 if lat else None
        row["requests"] = g
    by_trigger = {}
    for trigger in TRIGGERS:
        mine = [r for r in rows if r["trigger"] == trigger]
        if not mine:
            continue
        keys = sorted({k for r in mine for k in r.get("spans", {})})
        by_trigger[trigger] = {
            "n": len(mine),
            "outcomes": sorted({str(r["outcome"]) for r in mine}),
            "reasons": sorted({(r["reason"] or "").split(";")[0][:110] for r in mine}),
            "spans": {k: stats([r.get("spans", {}).get(k) for r in mine]) for k in keys},
            "requests": {k: sum(r["requests"][k] for r in mine)
                         for k in ("requests", "failed_attempts", "failed_at_death", "failed_other", "hit", "non_2xx")},
            "p99_ms": stats([r["requests"]["p99_ms"] for r in mine]),
            "max_ms": stats([r["requests"]["max_ms"] for r in mine]),
            "deaths": sum(len(r["moments"].get("new_deaths") or []) for r in mine),
            "restarts_of_faulty": sum(len(r["moments"].get("new_restarted") or []) for r in mine),
            "restarts_scheduled": sum(len(r["moments"].get("restart_scheduled") or []) for r in mine),
        }
    wrk = report.get("wrk_summary") or {}
    return {"rollbacks": rows, "by_trigger": by_trigger, "outside_p99_ms": req["outside_p99_ms"],
            "outside_max_ms": req["outside_max_ms"], "outside_requests": req["outside_requests"],
            "wrk_errors": wrk.get("errors"), "cpu_busy": report.get("cpu_busy"),
            "measured_sec": report["measure_end"] - report["measure_start"]}


def targets(res: dict) -> list[dict]:
    out = []
    main = res["phases"].get("rollback", {}).get("by_trigger", {})
    for trigger, limit, what in (
            ("crash", 1.0, "crash: fault onset (READY + crash_after_sec) -> previous release serving alone <= 1 s"),
            ("watchdog", WATCHDOG_SEC + 1.0, f"missed watchdog: onset (READY + stop_watchdog_after_sec) -> previous "
                                             f"release serving alone <= watchdog_sec + 1 s = {WATCHDOG_SEC + 1:g} s"),
            ("error-flood", 1.0, f"error flood: the {MAX_ERRORS + 1}st error (threshold crossed) -> previous release "
                                 f"serving alone <= 1 s")):
        spans = main.get(trigger, {}).get("spans", {})
        alone, stopped = spans.get("onset_to_alone"), spans.get("onset_to_new_stopped")
        if not alone or alone["n"] == 0:
            out.append({"target": what, "value": "n/a", "met": None})
            continue
        value = (f"no NEW process left: median {ms(alone['median'])} ms, max {ms(alone['max'])} ms over {alone['n']}; "
                 f"NEW's unit stopped: median {ms(stopped['median'])} ms, max {ms(stopped['max'])} ms")
        out.append({"target": what, "value": value, "met": alone["max"] <= limit,
                    "met_unit_stopped": stopped["max"] <= limit})
    for trigger, graceful in (("crash", False), ("watchdog", True), ("error-flood", True), ("health", True)):
        r = main.get(trigger, {}).get("requests")
        if not r:
            continue
        if graceful:
            bad = r["failed_attempts"] + r["non_2xx"]
            out.append({"target": f"{trigger}: 0 failed requests during the rollback (graceful reverse swap)",
                        "value": f"{r['failed_attempts']} failed attempts ({r['failed_at_death']} in flight on the "
                                 f"faulty process when it died), {r['hit']} requests hit, {r['non_2xx']} non-2xx",
                        "met": bad == 0})
        else:
            out.append({"target": "crash: 0 failed requests apart from those the crashing process held",
                        "value": f"{r['failed_at_death']} failed attempts in flight on the process when it died "
                                 f"(lost with it), {r['failed_other']} other, {r['non_2xx']} non-2xx",
                        "met": r["failed_other"] + r["non_2xx"] == 0})
    return out


# -------------------------------------------------------------------------------- printing


SPAN_ROWS = (
    ("switch: NEW READY -> probation begins (nothing watches NEW yet)", "ready_to_probation"),
    ("fault onset -> systemd's watchdog timeout", "onset_to_systemd_timeout"),
    ("fault onset -> the faulty process died", "onset_to_death"),
    ("probation begins -> 3rd failed check (threshold)", "probation_to_threshold"),
    ("ONSET -> the agent's verdict (rolling-back begins)", "onset_to_verdict"),
    ("  verdict -> previous release READY again", "verdict_to_old_ready"),
    ("  previous READY -> NEW unit stopped (pointer, daemon-reload, stop)", "old_ready_to_new_stopped"),
    ("    daemon-reload during the rollback", "reload_in_rollback"),
    ("    NEW stopping -> stopped (its drain)", "new_drain"),
    ("  rolling-back step, whole", "rolling_back_step"),
    ("ONSET -> previous release READY (serving again)", "onset_to_old_ready"),
    ("ONSET -> PREVIOUS RELEASE SERVING ALONE (no NEW process left)", "onset_to_alone"),
    ("ONSET -> NEW's unit stopped", "onset_to_new_stopped"),
    ("ONSET -> the agent's end of the rollback", "onset_to_agent_done"),
    ("nothing accepting: death -> a release READY", "nobody_serving"),
    ("probation begins -> previous release serving alone", "probation_to_alone"),
)


def print_report(res: dict) -> None:
    cfg, info = res["config"], res["machine"]
    print()
    print(f"machine: {info.get('cpus')} CPUs ({info.get('cpu_model')}), kernel {info.get('kernel')}, "
          f"{info.get('systemd')}, Debian {info.get('debian')}, nspawn container")
    print(f"load: wrk -t{cfg['connections']} -c{cfg['connections']} at saturation on {APP}; app: watchdog_sec "
          f"{WATCHDOG_SEC}, max_error_rate_per_minute {MAX_ERRORS}, http check every {CHECK_INTERVAL:g} s, "
          f"{CHECK_FAILURES} failures; probation_sec {cfg['probation']:g}")
    for phase, label in (("rollback", "as shipped"), ("sigterm-watchdog", "with WatchdogSignal=SIGTERM (experiment)")):
        p = res["phases"].get(phase)
        if not p:
            continue
        print()
        print(f"== {phase}: {label}; {p['measured_sec']:.0f} s measured, CPU busy {fmt((p['cpu_busy'] or 0) * 100, '%', 0)}, "
              f"requests outside the rollback windows: {p['outside_requests']}, p99 {fmt(p['outside_p99_ms'], ' ms', 2)}, "
              f"max {fmt(p['outside_max_ms'], ' ms', 1)}; wrk's counters: {p['wrk_errors']}")
        triggers = list(p["by_trigger"])
        print(f"  {'seconds, median / max':62}" + "".join(f" {t:>17}" for t in triggers))
        for label_, key in SPAN_ROWS:
            cells = []
            for t in triggers:
                st = p["by_trigger"][t]["spans"].get(key)
                cells.append(f"{fmt(st['median'], digits=3)} / {fmt(st['max'], digits=3)}" if st and st["n"] else "")
            if any(cells):
                print(f"  {label_:62}" + "".join(f" {c:>17}" for c in cells))
        print(f"  {'rollbacks (outcomes)':62}" + "".join(
            f" {str(p['by_trigger'][t]['n']) + ' ' + ','.join(p['by_trigger'][t]['outcomes']):>17}" for t in triggers))
        for key, label_ in (("requests", "requests in the windows"), ("failed_attempts", "failed attempts"),
                            ("failed_at_death", "  of them in flight on NEW when it died"),
                            ("failed_other", "  of them other"), ("hit", "requests hit (retried)"),
                            ("non_2xx", "non-2xx")):
            print(f"  {label_:62}" + "".join(f" {p['by_trigger'][t]['requests'][key]:>17}" for t in triggers))
        for key, label_ in (("deaths", "deaths of the faulty process"),
                            ("restarts_scheduled", "restarts of it begun by systemd (Restart=on-failure)"),
                            ("restarts_of_faulty", "  of them READY (serving again)")):
            print(f"  {label_:62}" + "".join(f" {p['by_trigger'][t][key]:>17}" for t in triggers))
        for key, label_ in (("p99_ms", "window p99 ms, median / max"), ("max_ms", "window max latency ms, median / max")):
            print(f"  {label_:62}" + "".join(
                f" {fmt(p['by_trigger'][t][key]['median'], digits=1) + ' / ' + fmt(p['by_trigger'][t][key]['max'], digits=1):>17}"
                for t in triggers))
        for t in triggers:
            print(f"  {t} reasons: {' | '.join(p['by_trigger'][t]['reasons'])}")
    print()
    print("other machines on this host at the start of each phase: "
          + ", ".join(f"{k}: {v['before']['nspawn']} nspawn, {v['before']['qemu']} qemu"
                      for k, v in res["neighbours"].items()))
    print()
    print("Targets")
    for t in res["targets"]:
        extra = ""
        if "met_unit_stopped" in t:
            extra = f" (counted to NEW's unit stopped: {'met' if t['met_unit_stopped'] else 'NOT met'})"
        print(f"  [{'met' if t['met'] else 'NOT met' if t['met'] is False else 'unknown'}] {t['target']}: {t['value']}"
              + extra)


# -------------------------------------------------------------------------------------- main


def results(meta: dict, reports: dict) -> dict:
    res = {**meta, "phases": {}}
    for name, r in reports.items():
        res["phases"][name] = analyse(r, meta["plan"], meta["config"]["probation"])
    res["targets"] = targets(res)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="rollbacks per trigger")
    ap.add_argument("--sigterm-watchdog-reps", type=int, default=3,
                    help="watchdog rollbacks with WatchdogSignal=SIGTERM (an experiment; 0: skip)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (= wrk threads)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds of load before each switch and after the last")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--probation", type=float, default=10.0, help="probation_sec of the app (the faults trip sooner)")
    ap.add_argument("--deb", type=Path, help="default: the newest dist/bloom-agent_*_all.deb")
    ap.add_argument("--json", type=Path, help="write all figures here")
    ap.add_argument("--keep-logs", type=Path, help="keep the per-request logs and the journal in this directory")
    ap.add_argument("--analyse", type=Path, metavar="DIR", help="no run: analyse again what --keep-logs DIR kept")
    args = ap.parse_args(argv)

    if args.analyse:
        work = args.analyse.resolve()
        meta = json.loads((work / "meta.json").read_text())
        reports = {}
        for name in ("rollback", "sigterm-watchdog"):
            if (work / name / "drive.json").exists():
                reports[name] = json.loads((work / name / "drive.json").read_text())
                reports[name].update(log_dir=str(work / name), journal=str(work / name / "journal.json"))
        res = results(meta, reports)
        print_report(res)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        return 0

    check_host()
    deb = (args.deb or newest_deb()).resolve()
    work = args.keep_logs.resolve() if args.keep_logs else Path(tempfile.mkdtemp(prefix="bloom-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    git = git_describe()
    deb_sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
    with machine() as m:
        info, plan = prepare(m, deb, work, args)
        reports = {}
        main_versions = [v for v in plan if not v.startswith("2.9.")]
        reports["rollback"] = run_phase(m, "rollback", main_versions, args, work)
        sigterm_versions = [v for v in plan if v.startswith("2.9.")]
        if sigterm_versions:
            write(m, SIGTERM_DROPIN, "[Service]\nWatchdogSignal=SIGTERM\n")
            run(m, ["systemctl", "daemon-reload"])
            reports["sigterm-watchdog"] = run_phase(m, "sigterm-watchdog", sigterm_versions, args, work)
    meta = {
        "config": {"reps": args.reps, "sigterm_watchdog_reps": args.sigterm_watchdog_reps,
                   "connections": args.connections, "pause": args.pause, "warmup": args.warmup,
                   "probation": args.probation, "deb": deb.name, "deb_sha256": deb_sha256, "git": git,
                   "command": shlex.join([sys.executable, *sys.argv]), "host": platform.node()},
        "machine": info,
        "plan": plan,
        "neighbours": {k: r["neighbours"] for k, r in reports.items()},
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
