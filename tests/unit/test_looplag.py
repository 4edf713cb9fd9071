"""The loop-lag probe: what it counts, what it keeps per second, and that a loop built with it sees
the passes a callback holds. Clocks are injected: nothing here depends on how fast the host is."""

import asyncio

from bloom_agent.daemon.looplag import BOUNDS_MS, RECENT_SEC, LoopLag, new_event_loop
from inprocess import InProcessAgent


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_passes_are_counted_over_each_bound_and_the_longest_is_kept_with_its_time():
    wall = Clock(5000.25)
    probe = LoopLag(wall)
    for ms in (0.2, 0.9, 3.0, 12.0, 7.0, 250.0, 0.5):
        probe.record(ms / 1000)
    report = probe.report()
    assert report["iterations"] == 7
    assert report["longest_stall_ms"] == 250.0
    assert report["longest_stall_at"] == 5000.25
    over = report["stalls_over_ms"]
    assert list(over) == [str(b) for b in BOUNDS_MS]
    assert (over["1"], over["2"], over["5"], over["10"], over["20"], over["200"], over["500"]) == (4, 4, 3, 2, 1, 1, 0)


def test_passes_under_a_millisecond_leave_no_trace_but_their_count():
    probe = LoopLag(Clock())
    for _ in range(1000):
        probe.record(0.0004)
    report = probe.report()
    assert (report["iterations"], report["longest_stall_ms"], report["longest_stall_at"]) == (1000, 0.0, None)
    assert report["recent_by_second"] == [] and set(report["stalls_over_ms"].values()) == {0}


def test_each_second_keeps_its_longest_pass_and_seconds_older_than_the_window_are_dropped():
    wall = Clock(100.1)
    probe = LoopLag(wall)
    probe.record(0.004)
    probe.record(0.009)
    probe.record(0.002)
    wall.advance(1.0)
    probe.record(0.003)
    assert probe.report()["recent_by_second"] == [[100, 9.0], [101, 3.0]]
    wall.advance(RECENT_SEC - 0.5)  # second 100 has left the window, 101 not yet
    assert probe.report()["recent_by_second"] == [[101, 3.0]]
    probe.record(0.0015)
    assert [s for s, _ in probe.recent] == [101, 100 + RECENT_SEC]
    wall.advance(RECENT_SEC)
    probe.record(0.002)
    assert len(probe.recent) == 1  # kept bounded as it goes, not only when reported
    assert probe.report()["longest_stall_ms"] == 9.0  # the longest since start stays


def test_a_loop_built_with_the_probe_sees_how_long_a_callback_held_it():
    clock = Clock()
    probe = LoopLag(Clock())
    loop = new_event_loop(probe, clock)

    async def scenario():
        await asyncio.sleep(0)
        clock.advance(0.075)  # this pass "takes" 75 ms of the probe's clock
        await asyncio.sleep(0)
        clock.advance(0.003)
        await asyncio.sleep(0.01)
        return "done"

    try:
        assert loop.run_until_complete(scenario()) == "done"
    finally:
        loop.close()
    report = probe.report()
    assert report["longest_stall_ms"] == 75.0
    assert report["stalls_over_ms"]["50"] == 1 and report["stalls_over_ms"]["2"] == 2
    assert report["iterations"] >= 3


def test_status_shows_the_probe_of_an_agent_built_with_one(tmp_path):
    probe = LoopLag()
    loop = new_event_loop(probe)

    async def scenario():
        host = await InProcessAgent(tmp_path, loop_lag=probe).start()
        status = await host.call("status")
        await host.stop()
        return status

    try:
        status = loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    finally:
        loop.close()
    seen = status["agent"]["loop"]
    assert seen["iterations"] > 0
    assert set(seen) == {"iterations", "longest_stall_ms", "longest_stall_at", "stalls_over_ms", "recent_window_sec",
                         "recent_by_second"}


def test_status_says_null_for_a_loop_without_the_probe(tmp_path):
    async def scenario():
        host = await InProcessAgent(tmp_path).start()
        status = await host.call("status")
        await host.stop()
        return status

    assert asyncio.run(asyncio.wait_for(scenario(), 30))["agent"]["loop"] is None
