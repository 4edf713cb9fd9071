"""The published figures of bench/scale_bench.py, made from its raw record (what scale_drive.py
returned at each level and in the long run). Pure functions: no machine, no clock, no I/O, so
tests/unit/test_bench_analysis.py checks them on a saved small record.
"""

from __future__ import annotations

import statistics

# Goals of issue 12, against which the report compares.
GROWTH_LIMIT = 2.0            # own overhead per switch and status latency: last level / first level
IDLE_CPU_LIMIT = 0.01         # share of one CPU, at the largest level
RSS_GROWTH_LIMIT_KB = 2048    # long run: RSS at the end minus after warm-up


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def top(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def cpu_share(before: dict, after: dict) -> float | None:
    """Share of one CPU a process used between two /proc samples."""
    seconds = after["t"] - before["t"]
    return (after["cpu_sec"] - before["cpu_sec"]) / seconds if seconds > 0 else None


def step_durations(steps: list) -> dict[str, float]:
    """Seconds from each recorded step to the next record ([time, step], the last one the outcome);
    a step taken twice (a retried step after a restart) adds up."""
    out: dict[str, float] = {}
    for (at, step), (nxt, _) in zip(steps, steps[1:]):
        out[step] = out.get(step, 0.0) + nxt - at
    return out


def own_overhead(event: dict, probation_cfg: float) -> float | None:
    """The agent's own time in one switch that ended ``done``: from its start of the deployment to its
    end (its own timestamps) minus the app's start-up to READY (``starting``), the old release's drain
    (``stopping-old``), systemd's daemon-reload and the configured probation. What is left is the
    agent's work: checking, writing the pointer, the probation beyond its length (monitors set up and
    torn down), blessing, and the state records between steps. None for a first deploy (its reload is
    inside ``starting``) or a switch that did not end ``done``."""
    result, record = event.get("result") or {}, event.get("record") or {}
    timings = result.get("timings") or {}
    if result.get("outcome") != "done" or not record.get("from_version"):
        return None
    if not record.get("started_at") or not record.get("finished_at"):
        return None
    if any(timings.get(k) is None for k in ("starting", "stopping-old", "daemon-reload")):
        return None
    agent_wall = record["finished_at"] - record["started_at"]
    return agent_wall - timings["starting"] - timings["stopping-old"] - timings["daemon-reload"] - probation_cfg


def switch_rows(events: list[dict], probation_cfg: float) -> list[dict]:
    rows = []
    for e in events:
        result, record = e.get("result") or {}, e.get("record") or {}
        timings = result.get("timings") or {}
        rows.append({
            "app": e["app"], "outcome": result.get("outcome"), "wall": e["t1"] - e["t0"],
            "agent_wall": (record["finished_at"] - record["started_at"])
            if record.get("finished_at") and record.get("started_at") else None,
            "starting": timings.get("starting"), "daemon_reload": timings.get("daemon-reload"),
            "own": own_overhead(e, probation_cfg),
        })
    return rows


def outcomes(events: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in events:
        key = str((e.get("result") or {}).get("outcome"))
        out[key] = out.get(key, 0) + 1
    return out


def level_row(level: dict) -> dict:
    """One level (N apps) of the scale run as the figures the report prints and plots."""
    cfg = level["probation"]
    lone = switch_rows(level["lone"], cfg)
    concurrent = [r for rnd in level["rounds"] for r in switch_rows(rnd["events"], cfg)]
    rollbacks = [e for rnd in level["rollback_rounds"] for e in rnd["events"]]
    status = level["status"]
    idle = level["idle"]
    journal = level.get("journal") or {}
    window = journal.get("window")
    version = med(status["version"])
    row = {
        "apps": level["apps"],
        "rss_mb": level["sample"]["agent"]["rss_kb"] / 1024,
        "rss_anon_mb": level["sample"]["agent"]["rss_anon_kb"] / 1024,
        "fds": level["sample"]["agent"]["fds"],
        "threads": level["sample"]["agent"]["threads"],
        "dbus_matches": (level["sample"].get("dbus") or {}).get("matches"),
        "idle_cpu": cpu_share(idle["before"], idle["after"]),
        "idle_sec": idle["after"]["t"] - idle["before"]["t"],
        # wake-ups of the agent's loop while idle (two of them are the status requests around the window)
        "idle_passes": idle.get("loop_passes"),
        "idle_cpu_no_metrics": cpu_share(level["idle_without_metrics"]["before"],
                                         level["idle_without_metrics"]["after"])
        if level.get("idle_without_metrics") else None,
        "lone_own_median": med([r["own"] for r in lone]),
        "lone_own_max": top([r["own"] for r in lone]),
        "lone_wall_median": med([r["wall"] for r in lone]),
        "lone_reload_median": med([r["daemon_reload"] for r in lone]),
        "lone_n": sum(r["own"] is not None for r in lone),
        "concurrent_width": max((len(rnd["events"]) for rnd in level["rounds"]), default=0),
        "concurrent_own_median": med([r["own"] for r in concurrent]),
        "concurrent_own_max": top([r["own"] for r in concurrent]),
        "concurrent_round_wall_median": med([rnd["wall"] for rnd in level["rounds"]]),
        "concurrent_reload_median": med([r["daemon_reload"] for r in concurrent]),
        "concurrent_outcomes": outcomes([e for rnd in level["rounds"] for e in rnd["events"]]),
        "rollback_outcomes": outcomes(rollbacks),
        "rollback_wall_median": med([e["t1"] - e["t0"] for e in rollbacks]),
        "version_median": version,
        "status_all_median": med(status["status_all"]),
        "status_app_median": med(status["status_app"]),
        # the agent's share: a round trip on the control socket from a client already running
        "status_all_agent": med((status.get("round_trip") or {}).get("status_all") or []),
        "status_app_agent": med((status.get("round_trip") or {}).get("status_app") or []),
        "journal_apps": journal.get("apps"),
        "journal_agent_cpu": cpu_share(*window["agent"]) if window else None,
        "journal_journald_cpu": cpu_share(*window["journald"]) if window else None,
        "journal_window_sec": (window["agent"][1]["t"] - window["agent"][0]["t"]) if window else None,
        "journal_lines_per_sec": (journal["lines"] / (window["agent"][1]["t"] - window["agent"][0]["t"]))
        if window and journal.get("lines") is not None else None,
        "loop_stall_rounds_ms": rounds_stall(level),
        "journal_outcomes": dict(sorted({str(o): journal["outcomes"].count(o)
                                         for o in journal.get("outcomes", [])}.items())),
    }
    return row


def rounds_stall(level: dict) -> float | None:
    """The longest pass of the agent's loop (its loop-lag probe, agent.loop in status) over the seconds
    of the level's concurrent rounds; None when the agent has no probe."""
    loop = level["sample"].get("loop")
    events = [e for rnd in level["rounds"] for e in rnd["events"]]
    if not loop or not events:
        return None
    return stall_in_window(loop["recent_by_second"], min(e["t0"] for e in events), max(e["t1"] for e in events))


def growth(rows: list[dict], key: str) -> float | None:
    """The figure at the largest level over the figure at the smallest."""
    ordered = sorted(rows, key=lambda r: r["apps"])
    first, last = ordered[0].get(key), ordered[-1].get(key)
    if first is None or last is None or first <= 0:
        return None
    return last / first


def scale_goals(rows: list[dict]) -> list[dict]:
    """Each goal with the value measured and whether it was met (None: not measurable from this run)."""
    if not rows:
        return []
    ordered = sorted(rows, key=lambda r: r["apps"])
    span = f"{ordered[0]['apps']} -> {ordered[-1]['apps']} apps"
    goals = []
    for key, what in (("lone_own_median", "agent's own overhead per switch (median of lone switches)"),
                      ("concurrent_own_median", "agent's own overhead per switch (median in concurrent rounds)"),
                      ("status_all_agent", "status latency without client start-up (median, all apps)"),
                      ("status_app_agent", "status APP latency without client start-up (median)")):
        g = growth(rows, key)
        goals.append({"goal": f"{what} grows < {GROWTH_LIMIT:g}x, {span}",
                      "value": None if g is None else round(g, 2),
                      "met": None if g is None else g < GROWTH_LIMIT})
    last = ordered[-1]
    goals.append({"goal": f"idle CPU < {IDLE_CPU_LIMIT:.0%} with {last['apps']} apps",
                  "value": last["idle_cpu"],
                  "met": None if last["idle_cpu"] is None else last["idle_cpu"] < IDLE_CPU_LIMIT})
    return goals


def longrun_summary(run: dict, warmup_index: int = 1) -> dict:
    """The long run: what the agent held after warm-up (the first sample after the first block of
    rounds) against the end. Counts of descriptors, threads and D-Bus matches are compared too: one
    left behind per switch would show as hundreds."""
    samples = run["samples"]
    warm, end = samples[min(warmup_index, len(samples) - 1)], samples[-1]

    def agent(s, key):
        return s["agent"][key]

    def matches(s):
        return (s.get("dbus") or {}).get("matches")

    return {
        "switches": end["switches"], "rollbacks": end["rollbacks"], "seconds": run["seconds"],
        "tally": dict(sorted(run["tally"].items())),
        "warmup_at": {"switches": warm["switches"], "rollbacks": warm["rollbacks"]},
        "rss_kb": [agent(samples[0], "rss_kb"), agent(warm, "rss_kb"), agent(end, "rss_kb")],
        "rss_growth_kb": agent(end, "rss_kb") - agent(warm, "rss_kb"),
        "rss_anon_kb": [agent(samples[0], "rss_anon_kb"), agent(warm, "rss_anon_kb"), agent(end, "rss_anon_kb")],
        "fds": [agent(samples[0], "fds"), agent(warm, "fds"), agent(end, "fds")],
        "threads": [agent(samples[0], "threads"), agent(warm, "threads"), agent(end, "threads")],
        "dbus_matches": [matches(samples[0]), matches(warm), matches(end)],
        "db_bytes": [samples[0]["db"]["bytes"], warm["db"]["bytes"], end["db"]["bytes"]],
        "db_rows": [samples[0]["db"]["rows"], end["db"]["rows"]],
        "round_wall_median": med([r["wall"] for r in run["rounds"] if r["kind"] == "switch"]),
        "round_wall_first_last": [run["rounds"][0]["wall"], run["rounds"][-1]["wall"]] if run["rounds"] else None,
        "loop_longest_stall_ms": (run.get("loop") or {}).get("longest_stall_ms"),
        "series": [{"switches": s["switches"], "rollbacks": s["rollbacks"], "rss_kb": agent(s, "rss_kb"),
                    "fds": agent(s, "fds"), "threads": agent(s, "threads"), "matches": matches(s),
                    "db_bytes": s["db"]["bytes"]} for s in samples],
    }


def longrun_goals(summary: dict) -> list[dict]:
    goals = [{"goal": f"RSS grows by at most {RSS_GROWTH_LIMIT_KB // 1024} MB after warm-up",
              "value": summary["rss_growth_kb"], "met": summary["rss_growth_kb"] <= RSS_GROWTH_LIMIT_KB}]
    # each value: [at the start, after warm-up, at the end]
    for name, values in (("open file descriptors", summary["fds"]), ("threads", summary["threads"]),
                         ("D-Bus match rules", summary["dbus_matches"])):
        if None in values:
            goals.append({"goal": f"no {name} left behind", "value": values, "met": None})
        else:
            goals.append({"goal": f"no {name} left behind (after warm-up vs end)", "value": values,
                          "met": values[2] <= values[1]})
    return goals


def stall_in_window(recent_by_second: list, t0: float, t1: float) -> float | None:
    """The longest loop stall (ms) the agent reported for the seconds that overlap [t0, t1]
    (``agent.loop.recent_by_second``: [unix second, ms] for seconds with a pass of at least 1 ms).
    0.0 when no second of the window had one; whole seconds, so the window's edges may add the
    passes of up to a second on either side."""
    lo, hi = int(t0), int(t1)
    values = [ms for second, ms in recent_by_second if lo <= second <= hi]
    return max(values) if values else 0.0


def stalls_over(before: dict, after: dict, bound_ms: int) -> int:
    """How many loop passes over bound_ms there were between two reports of agent.loop."""
    key = str(bound_ms)
    return after["stalls_over_ms"][key] - before["stalls_over_ms"][key]
