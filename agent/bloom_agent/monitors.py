"""Probation monitors. Each watches the new release and returns a reason when it trips.

All are event-driven: the unit monitor waits for systemd's PropertiesChanged, the journal monitor
for the journal's file descriptor, health checks on their own interval. ``probation`` runs them
together until one trips, the window ends, or someone asks for a rollback.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from typing import Protocol

from .healthchecks import CheckSpec, Target, run_check
from .systemd_adapter import Systemd

log = logging.getLogger(__name__)

# journald's "Suppressed N messages from UNIT" (rate limiting); those messages count as errors.
SUPPRESSED_MESSAGE_ID = "a596d6fe7bfa4994828e72309e95d61e"
_SUPPRESSED = re.compile(r"Suppressed (\d+) messages from (\S+)")
WINDOW_SEC = 60.0
MONITOR_STOP_SEC = 5.0  # a cancelled monitor stops at its next await; this only bounds a bug
STATUS_ATTEMPTS = 20  # 0.5 s apart: a D-Bus error lasting 10 s fails the unit monitor


class Monitor(Protocol):
    name: str

    async def watch(self) -> str: ...


class UnitMonitor:
    """Crashes, restarts and missed watchdog pings: what systemd itself knows about the unit."""

    name = "unit"

    def __init__(self, systemd: Systemd, unit: str) -> None:
        self.systemd, self.unit = systemd, unit

    async def watch(self) -> str:
        baseline = (await self._status_retrying()).n_restarts
        while True:
            trip = _unit_trip(await self._status_retrying(), baseline)
            if trip:
                return trip
            # A short timeout is a safety net for a lost PropertiesChanged, not the way changes arrive.
            await self.systemd.wait_for_change(self.unit, 2.0)


    async def _status_retrying(self):
        """A D-Bus call can fail for a moment (EINTR when a signal arrives, a slow bus): that says
        nothing about the release. Only an error that lasts is the monitor failing."""
        for attempt in range(STATUS_ATTEMPTS):
            try:
                return self.systemd.status(self.unit)
            except Exception as exc:
                if attempt == STATUS_ATTEMPTS - 1:
                    raise
                log.warning("reading %s from systemd failed (%s); retrying", self.unit, exc)
                await asyncio.sleep(0.5)


def _unit_trip(status, baseline: int) -> str | None:
    if status.result == "watchdog":
        return f"watchdog: {status.name} missed its watchdog ping (systemd result 'watchdog'; {status.describe()})"
    if status.n_restarts > baseline:
        return f"crash: {status.name} restarted ({status.describe()})"
    if not status.active:
        return f"crash: {status.name} stopped running ({status.describe()})"
    return None


class JournalMonitor:
    """Errors the release logs: priority err or worse, or MESSAGE matching error_patterns, per minute."""

    name = "journal"

    def __init__(self, unit: str, max_per_minute: int, patterns: tuple[str, ...], since: float | None = None) -> None:
        self.unit, self.max_per_minute = unit, max_per_minute
        self.patterns = [re.compile(p) for p in patterns]
        self.since = time.time() if since is None else since
        self.window: collections.deque[tuple[float, int]] = collections.deque()
        self.last_error = ""

    def _open(self):
        from systemd import journal

        reader = journal.Reader()
        reader.add_match(_SYSTEMD_UNIT=self.unit)
        reader.add_disjunction()
        reader.add_match(UNIT=self.unit)  # systemd's own messages about the unit
        reader.add_disjunction()
        reader.add_match(MESSAGE_ID=SUPPRESSED_MESSAGE_ID)
        reader.seek_realtime(self.since)
        return reader

    def _count(self, entry: dict) -> int:
        message = str(entry.get("MESSAGE", ""))
        if str(entry.get("MESSAGE_ID", "")).replace("-", "") == SUPPRESSED_MESSAGE_ID:
            m = _SUPPRESSED.search(message)
            return int(m[1]) if m and m[2] == self.unit else 0
        priority = entry.get("PRIORITY")
        if (priority is not None and int(priority) <= 3) or any(p.search(message) for p in self.patterns):
            return 1
        return 0

    def feed(self, entry: dict, now: float) -> str | None:
        """Account one journal entry; return a trip reason when the rate is crossed."""
        count = self._count(entry)
        if count:
            self.window.append((now, count))
            self.last_error = str(entry.get("MESSAGE", ""))[:200]
        while self.window and self.window[0][0] <= now - WINDOW_SEC:
            self.window.popleft()
        rate = sum(n for _, n in self.window)
        if rate > self.max_per_minute:
            return (f"journal error rate {rate}/min > {self.max_per_minute}/min for {self.unit}; "
                    f"last error: {self.last_error}")
        return None

    async def watch(self) -> str:
        reader = self._open()
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(reader.fileno(), readable.set)
        try:
            while True:
                for entry in iter(reader.get_next, {}):
                    trip = self.feed(entry, time.monotonic())
                    if trip:
                        return trip
                readable.clear()
                await readable.wait()
                reader.process()  # re-arms the descriptor; the new entries are read at the top
        finally:
            loop.remove_reader(reader.fileno())
            reader.close()


class CheckMonitor:
    """One health check on its interval; trips after ``failures`` consecutive failures."""

    def __init__(self, spec: CheckSpec, target: Target) -> None:
        self.spec, self.target = spec, target
        self.name = f"health check {spec.name}"

    async def watch(self) -> str:
        consecutive = 0
        while True:
            result = await run_check(self.spec, self.target)
            consecutive = 0 if result.ok else consecutive + 1
            if not result.ok:
                log.warning("%s: %s failed (%d/%d): %s", self.target.unit, self.spec.name, consecutive,
                            self.spec.failures, result.detail)
            if consecutive >= self.spec.failures:
                return f"health check {self.spec.name} failed {consecutive} times in a row: {result.detail}"
            await asyncio.sleep(self.spec.interval_sec)


async def probation(monitors: list[Monitor], seconds: float, abort: asyncio.Event) -> str | None:
    """None when the window passes quietly; otherwise why it ended early."""
    tasks = {asyncio.ensure_future(m.watch()): m for m in monitors}
    aborted = asyncio.ensure_future(abort.wait())
    try:
        done, _ = await asyncio.wait({*tasks, aborted}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if aborted in done:
            return ""
        for task in done:
            exc = task.exception()
            if exc is not None:
                # A monitor that cannot run is reported, not mistaken for a healthy release.
                return f"{tasks[task].name} monitor failed: {exc!r}"
            return task.result()
        return None
    finally:
        for task in (*tasks, aborted):
            task.cancel()
        # Bounded: a monitor that ignores its cancellation must not hold the deployment (and the
        # app's lock) forever; it is left behind, and said.
        _, stuck = await asyncio.wait({*tasks, aborted}, timeout=MONITOR_STOP_SEC)
        for task in stuck:
            name = tasks[task].name if task in tasks else "abort"
            log.error("the %s monitor did not stop within %g s; left running", name, MONITOR_STOP_SEC)
