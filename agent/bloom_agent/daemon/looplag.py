"""The loop-lag probe: how long the agent's event loop goes without looking at its sockets.

Everything the agent answers (requests, D-Bus signals, the watchdog ping) waits while one pass of
the loop runs its callbacks, so the time between the selector returning and the loop calling it
again is exactly how late anything that arrived meanwhile can be seen. The probe measures that span
in a selector wrapper, on every pass, instead of timing a periodic tick: a tick fine enough to see
a 10 ms stall would wake an idle agent a hundred times a second, and a coarse one misses the
stalls that fall between its ticks. Cost: two clock reads per pass, no extra wake-up.

``bloomctl status --json`` shows the report under ``agent.loop``.
"""

from __future__ import annotations

import asyncio
import collections
import selectors
import time
from typing import Callable

# Cumulative counts of passes longer than each bound (ms), as a Prometheus histogram keeps them.
BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Per-second maxima are kept this long, so that a client can take the longest stall of a window it
# timed itself (a benchmark, an alert) without the agent knowing about windows.
RECENT_SEC = 600
# Shorter passes are ordinary work and are not kept per second (they still count in ``iterations``).
RECENT_MIN_MS = 1.0


class LoopLag:
    """What the probe has seen since the agent started. ``record`` takes one pass's busy time."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.iterations = 0
        self.longest_ms = 0.0
        self.longest_at: float | None = None
        self.over = [0] * len(BOUNDS_MS)
        # (unix second, longest pass in it, ms), oldest first; at most one entry per second
        self.recent: collections.deque[tuple[int, float]] = collections.deque()

    def record(self, busy_sec: float) -> None:
        self.iterations += 1
        ms = busy_sec * 1000
        if ms < RECENT_MIN_MS:  # the common case: one comparison
            return
        now = self._wall()
        if ms > self.longest_ms:
            self.longest_ms, self.longest_at = ms, now
        for i, bound in enumerate(BOUNDS_MS):
            if ms <= bound:
                break
            self.over[i] += 1
        second = int(now)
        if self.recent and self.recent[-1][0] == second:
            if ms > self.recent[-1][1]:
                self.recent[-1] = (second, ms)
        else:
            self.recent.append((second, ms))
        while self.recent[0][0] <= second - RECENT_SEC:
            self.recent.popleft()

    def report(self) -> dict:
        now = int(self._wall())
        return {
            "iterations": self.iterations,
            "longest_stall_ms": round(self.longest_ms, 3),
            "longest_stall_at": self.longest_at,
            "stalls_over_ms": {str(b): n for b, n in zip(BOUNDS_MS, self.over)},
            "recent_window_sec": RECENT_SEC,
            "recent_by_second": [[s, round(ms, 3)] for s, ms in self.recent if s > now - RECENT_SEC],
        }


class TimedSelector(selectors.DefaultSelector):
    """The default selector, reporting to a probe how long the loop was away between two selects."""

    def __init__(self, probe: LoopLag, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._probe = probe
        self._clock = clock
        self._returned: float | None = None

    def select(self, timeout=None):
        if self._returned is not None:
            self._probe.record(self._clock() - self._returned)
        try:
            return super().select(timeout)
        finally:
            self._returned = self._clock()


def new_event_loop(probe: LoopLag, clock: Callable[[], float] = time.monotonic) -> asyncio.AbstractEventLoop:
    """An ordinary asyncio loop (signal handlers, subprocesses) whose passes the probe sees."""
    return asyncio.SelectorEventLoop(TimedSelector(probe, clock))
