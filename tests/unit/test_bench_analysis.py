"""The benchmarks' analysis (bench/analysis/): the figures docs/benchmarks.md publishes, from small
hand-made records and from a saved record of a short scale run (tests/data/bench/scale_small.json,
a run of bench/scale_bench.py with 1 and 2 apps and a 20-switch long run, cut down to what the
analysis reads)."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from analysis import scale  # noqa: E402

SAVED = REPO / "tests" / "data" / "bench" / "scale_small.json"


def switch_event(outcome="done", from_version="1.0.0", started=100.0, finished=103.5, starting=0.3,
                 stopping_old=0.05, reload=0.4):
    return {"app": "s000", "t0": started - 0.2, "t1": finished + 0.1,
            "result": {"outcome": outcome, "timings": {"starting": starting, "stopping-old": stopping_old,
                                                       "daemon-reload": reload, "checking": 0.01}},
            "record": {"from_version": from_version, "started_at": started, "finished_at": finished}}


def test_own_overhead_is_the_agents_wall_time_without_startup_drain_reload_and_the_configured_probation():
    assert scale.own_overhead(switch_event(), probation_cfg=2.0) == pytest.approx(3.5 - 0.3 - 0.05 - 0.4 - 2.0)


@pytest.mark.parametrize("event", [
    switch_event(outcome="rolled-back"),   # a rollback's time is not a switch's overhead
    switch_event(from_version=None),       # a first deploy: its reload is inside starting
    {**switch_event(), "record": {}},      # no record of the deployment
])
def test_own_overhead_is_none_where_it_does_not_apply(event):
    assert scale.own_overhead(event, 2.0) is None


def test_step_durations_run_from_each_record_to_the_next_and_a_repeated_step_adds_up():
    steps = [[10.0, "starting"], [10.5, "checking"], [10.6, "probation"], [11.0, "starting"], [11.2, "done"]]
    assert scale.step_durations(steps) == pytest.approx({"starting": 0.7, "checking": 0.1, "probation": 0.4})


def test_cpu_share_is_cpu_seconds_over_wall_seconds():
    assert scale.cpu_share({"t": 10.0, "cpu_sec": 1.0}, {"t": 40.0, "cpu_sec": 1.3}) == pytest.approx(0.01)
    assert scale.cpu_share({"t": 10.0, "cpu_sec": 1.0}, {"t": 10.0, "cpu_sec": 1.0}) is None


def test_stall_in_window_takes_the_seconds_that_overlap_the_window_only():
    recent = [[99, 500.0], [100, 3.0], [101, 12.5], [102, 4.0], [103, 800.0]]
    assert scale.stall_in_window(recent, 100.7, 102.2) == 12.5
    assert scale.stall_in_window(recent, 200.0, 210.0) == 0.0


def test_stalls_over_a_bound_between_two_reports():
    before = {"stalls_over_ms": {"10": 3, "50": 1}}
    after = {"stalls_over_ms": {"10": 7, "50": 1}}
    assert (scale.stalls_over(before, after, 10), scale.stalls_over(before, after, 50)) == (4, 0)


def test_growth_is_the_largest_level_over_the_smallest_whatever_the_order():
    rows = [{"apps": 50, "x": 0.09}, {"apps": 1, "x": 0.03}, {"apps": 10, "x": 0.5}]
    assert scale.growth(rows, "x") == pytest.approx(3.0)
    assert scale.growth([{"apps": 1, "x": None}, {"apps": 2, "x": 1.0}], "x") is None


def test_scale_goals_say_met_not_met_or_unknown():
    rows = [{"apps": 1, "lone_own_median": 0.04, "concurrent_own_median": 0.05, "status_all_agent": 0.002,
             "status_app_agent": None, "idle_cpu": 0.0},
            {"apps": 50, "lone_own_median": 0.07, "concurrent_own_median": 0.2, "status_all_agent": 0.01,
             "status_app_agent": 0.003, "idle_cpu": 0.012}]
    verdicts = [g["met"] for g in scale.scale_goals(rows)]
    assert verdicts == [True, False, False, None, False]


def test_longrun_goals_compare_the_end_with_after_warm_up():
    summary = {"rss_growth_kb": 2049, "fds": [12, 14, 14], "threads": [2, 3, 4], "dbus_matches": [None, 1, 1]}
    assert [g["met"] for g in scale.longrun_goals(summary)] == [False, True, False, None]


# ------------------------------------------------------------------------------ the saved record


@pytest.fixture(scope="module")
def saved():
    return json.loads(SAVED.read_text())


def test_the_saved_levels_give_a_row_per_level_with_every_figure_the_report_prints(saved):
    rows = [scale.level_row(level) for level in saved["scale"]["levels"]]
    assert [r["apps"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rollback_outcomes"] == {"rolled-back": r["concurrent_width"]}
        assert set(r["concurrent_outcomes"]) == {"done"}
        assert 0 < r["lone_own_median"] <= r["lone_own_max"] < r["lone_wall_median"]
        assert 0 <= r["idle_cpu"] < 0.05 and r["rss_mb"] > 10
        assert 0 < r["status_all_agent"] < r["status_all_median"]
        assert r["journal_window_sec"] > 0 and r["journal_lines_per_sec"] > 0
        assert r["loop_stall_rounds_ms"] is not None


def test_the_saved_records_own_overhead_adds_up_from_its_parts(saved):
    level = saved["scale"]["levels"][0]
    event = level["lone"][0]
    t, rec = event["result"]["timings"], event["record"]
    parts = scale.step_durations(rec["steps"])
    # from the step records: checking + pointing without its reload + probation beyond its length +
    # blessing; the rest of the agent's wall time is the bookkeeping between steps
    own_from_steps = (parts["checking"] + parts["pointing"] - t["daemon-reload"] + parts["probation"]
                      - level["probation"] + parts["blessing"])
    own = scale.own_overhead(event, level["probation"])
    between = (rec["finished_at"] - rec["started_at"]) - sum(parts.values())
    assert own == pytest.approx(own_from_steps + between + (parts["starting"] - t["starting"])
                                + (parts["stopping-old"] - t["stopping-old"]), abs=1e-6)
    assert 0 < own < 1


def test_the_saved_long_run_summary(saved):
    summary = scale.longrun_summary(saved["longrun"])
    assert (summary["switches"], summary["rollbacks"]) == (20, 2)
    assert summary["tally"] == {"rollback:rolled-back": 2, "switch:done": 20}
    assert len(summary["series"]) == len(saved["longrun"]["samples"])
    assert summary["rss_growth_kb"] == summary["rss_kb"][2] - summary["rss_kb"][1]
    assert all(isinstance(v, int) for v in summary["fds"] + summary["threads"])
    assert [g["goal"] for g in scale.longrun_goals(summary)][0].startswith("RSS grows by at most 2 MB")


def test_the_curves_are_drawn_from_the_saved_record(saved, tmp_path):
    pytest.importorskip("matplotlib")
    from analysis import plot
    rows = [scale.level_row(level) for level in saved["scale"]["levels"]]
    path = plot.draw(rows, tmp_path / "scale.png", "saved record", scale.longrun_summary(saved["longrun"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_levels_no_goals():
    assert scale.scale_goals([]) == []


def test_a_level_with_an_idle_window_without_metrics_gives_both_shares(saved):
    level = json.loads(json.dumps(saved["scale"]["levels"][1]))
    idle = level["idle"]
    level["idle_without_metrics"] = {"before": {**idle["before"], "cpu_sec": 5.0},
                                     "after": {**idle["after"], "cpu_sec": 5.0}, "loop_passes": 20}
    row = scale.level_row(level)
    assert row["idle_cpu_no_metrics"] == 0.0
    assert row["idle_cpu"] == scale.cpu_share(idle["before"], idle["after"])
    assert scale.level_row(saved["scale"]["levels"][1])["idle_cpu_no_metrics"] is None
