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
from typing import Callable, Protocol

from bloom_agent.config.checks import CheckSpec
from bloom_agent.systemd.adapter import Systemd
from bloom_agent.watch.checks import Target, run_check

log = logging.getLogger(__name__)

# journald's "Suppressed N messages from UNIT" (rate limiting); those messages count as errors.
SUPPRESSED_MESSAGE_ID = "a596d6fe7bfa4994828e72309e95d61e"
_SUPPRESSED = re.compile(r"Suppressed (\d+) messages from (\S+)")
WINDOW_SEC = 60.0
MONITOR_STOP_SEC = 5.0  # a cancelled monitor stops at its next await; this only bounds a bug
STATUS_ATTEMPTS = 20  # 0.5 s apart: a D-Bus error lasting 10 s fails the unit monitor
EXTENSION_POLL_SEC = 0.1  # during an extension, how often probation looks whether the doubt is gone


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
                return await self.systemd.status(self.unit)
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


def _priority(value) -> int | None:
    """A syslog priority, or None for one that is missing or not a number (a client may send anything)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# The fields the journal monitor reads; the rest of an entry is never decoded. Reading every field
# (Reader.get_next) and converting each was most of the agent's CPU while a release logged thousands
# of lines a second. Each field read scans the entry's items again (bench/journal_read_cost.py), so a
# line of the release, the bulk, costs three; the fields that tell journald's and systemd's own lines
# apart are read only for the others (a release's line never has _TRANSPORT=driver).
RELEASE_FIELDS = ("_SYSTEMD_UNIT", "PRIORITY", "MESSAGE")
OTHER_FIELDS = ("_TRANSPORT", "MESSAGE_ID", "_PID", "UNIT")
ERROR_PRIORITIES = ("0", "1", "2", "3")  # emerg, alert, crit, err
# journald already coalesces its notifications (250 ms); this bounds the wake-ups when several journal
# files change at once, for at most this much latency.
MIN_WAKE_GAP_SEC = 0.05


def journal_matches(unit: str, every_line: bool) -> list[list[str]]:
    """The terms (ORed; the matches within one are ANDed) libsystemd filters the journal by, so that
    lines that cannot count are skipped inside libsystemd instead of decoded here. Each term names a
    trusted field (``_SYSTEMD_UNIT``, ``_PID``, ``_TRANSPORT``: journald sets them, a client cannot), and
    ``_count`` checks every entry again. ``every_line``: error patterns need the release's lines of any
    priority; without them only priorities err and worse can count."""
    priorities = [] if every_line else [f"PRIORITY={p}" for p in ERROR_PRIORITIES]
    return [[f"_SYSTEMD_UNIT={unit}", *priorities],
            ["_PID=1", f"UNIT={unit}", *priorities],  # systemd's own messages about the unit
            [f"MESSAGE_ID={SUPPRESSED_MESSAGE_ID}", "_TRANSPORT=driver"]]


def _fields(reader, names: tuple[str, ...], into: dict) -> dict:
    for name in names:
        try:
            value = reader._get(name)
        except KeyError:  # the entry has no such field
            continue
        # bytes from python3-systemd 235; a newer one may decode for us
        into[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return into


def read_entries(reader, unit: str):
    """The entries after the reader's position, each as a dict of the fields ``_count`` needs (as text)."""
    while reader._next():
        entry = _fields(reader, RELEASE_FIELDS, {})
        if entry.get("_SYSTEMD_UNIT") != unit:
            _fields(reader, OTHER_FIELDS, entry)
        yield entry


class JournalMonitor:
    """Errors the release logs: priority err or worse, or MESSAGE matching error_patterns, per minute."""

    name = "journal"

    def __init__(self, unit: str, max_per_minute: int, patterns: tuple[str, ...], since: float | None = None) -> None:
        self.unit, self.max_per_minute = unit, max_per_minute
        self.patterns = [re.compile(p) for p in patterns]
        self.since = time.time() if since is None else since
        self.window: collections.deque[tuple[float, int]] = collections.deque()
        self.last_error = ""
        self.rate = 0  # errors in the last minute, as of the last entry read
        self.entries_read = self.wakeups = 0

    def _open(self):
        # python3-systemd's journal reader is only needed in probation: imported here, not at start-up.
        from systemd import journal

        reader = journal.Reader()
        for i, term in enumerate(journal_matches(self.unit, bool(self.patterns))):
            if i:
                reader.add_disjunction()
            reader.add_match(*term)
        reader.seek_realtime(self.since)
        return reader

    def _count(self, entry: dict) -> int:
        """How many errors an entry stands for. Only fields journald itself sets (``_``-prefixed) say
        where an entry comes from: anyone can log ``UNIT=`` or ``MESSAGE_ID=``, and must not be able to
        roll a release back by it."""
        message = str(entry.get("MESSAGE", ""))
        if str(entry.get("_TRANSPORT", "")) == "driver":  # journald's own lines
            if str(entry.get("MESSAGE_ID", "")).replace("-", "") != SUPPRESSED_MESSAGE_ID:
                return 0
            m = _SUPPRESSED.search(message)
            return int(m[1]) if m and m[2] == self.unit else 0
        from_release = entry.get("_SYSTEMD_UNIT") == self.unit
        from_systemd = str(entry.get("_PID", "")) == "1" and entry.get("UNIT") == self.unit
        if not (from_release or from_systemd):
            return 0
        priority = _priority(entry.get("PRIORITY"))
        if (priority is not None and priority <= 3) or any(p.search(message) for p in self.patterns):
            return 1
        return 0

    def feed(self, entry: dict, now: float) -> str | None:
        """Account one journal entry; return a trip reason when the rate is crossed."""
        count = self._count(entry)
        if count:
            self.window.append((now, count))
            self.rate += count
            self.last_error = str(entry.get("MESSAGE", ""))[:200]
        while self.window and self.window[0][0] <= now - WINDOW_SEC:
            self.rate -= self.window.popleft()[1]
        if self.rate > self.max_per_minute:
            return (f"journal error rate {self.rate}/min > {self.max_per_minute}/min for {self.unit}; "
                    f"last error: {self.last_error}")
        return None

    async def watch(self) -> str:
        reader = self._open()
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(reader.fileno(), readable.set)
        try:
            while True:
                for entry in read_entries(reader, self.unit):
                    self.entries_read += 1
                    trip = self.feed(entry, time.monotonic())
                    if trip:
                        return trip
                last_read = loop.time()
                readable.clear()
                await readable.wait()
                self.wakeups += 1
                gap = last_read + MIN_WAKE_GAP_SEC - loop.time()
                if gap > 0:
                    # Out of the loop meanwhile: the loop's readers are level-triggered, and a descriptor
                    # not yet drained by process() would wake it again and again.
                    loop.remove_reader(reader.fileno())
                    await asyncio.sleep(gap)
                    loop.add_reader(reader.fileno(), readable.set)
                reader.process()  # drains the descriptor; the new entries are read at the top
        finally:
            loop.remove_reader(reader.fileno())
            reader.close()
            log.info("journal monitor for %s: %d entries read in %d wake-ups", self.unit, self.entries_read,
                     self.wakeups)


class CheckMonitor:
    """One health check on its interval; trips after ``failures`` consecutive failures.

    ``in_doubt`` tells probation that this check has no verdict yet: it has begun failing, or an
    attempt is still out. Probation does not end on a check in doubt (see ``probation``).
    """

    def __init__(self, spec: CheckSpec, target: Target) -> None:
        self.spec, self.target = spec, target
        self.name = f"health check {spec.name}"
        self.consecutive = 0
        self.attempting = False
        self.last_detail = ""

    @property
    def in_doubt(self) -> bool:
        return self.consecutive > 0 or self.attempting

    @property
    def verdict_within(self) -> float:
        """The longest a check that begins failing now takes to trip."""
        return self.spec.time_to_trip

    def doubt(self) -> str:
        if self.consecutive:
            return f"{self.spec.name} failing ({self.consecutive}/{self.spec.failures}): {self.last_detail}"
        return f"{self.spec.name} has an attempt out"

    async def watch(self) -> str:
        while True:
            self.attempting = True
            try:
                result = await run_check(self.spec, self.target)
            finally:
                self.attempting = False
            self.consecutive = 0 if result.ok else self.consecutive + 1
            self.last_detail = result.detail
            if not result.ok:
                log.warning("%s: %s failed (%d/%d): %s", self.target.unit, self.spec.name, self.consecutive,
                            self.spec.failures, result.detail,
                            extra={"BLOOM_APP": self.target.app, "BLOOM_VERSION": self.target.version})
            if self.consecutive >= self.spec.failures:
                return f"health check {self.spec.name} failed {self.consecutive} times in a row: {result.detail}"
            await asyncio.sleep(self.spec.interval_sec)


Extended = Callable[[float, str], None]


def _no_extension_report(seconds: float, why: str) -> None:
    """For callers nobody is waiting on."""


async def probation(monitors: list[Monitor], seconds: float, abort: asyncio.Event,
                    extended: Extended = _no_extension_report) -> str | None:
    """None when the window passes quietly; otherwise why it ended early.

    A window must not end on a health check that has begun failing: a short probation would
    otherwise bless a release whose check was one failure from its verdict. When the window ends
    with a check in doubt it is extended, once, by the longest such a check takes to trip
    (``CheckSpec.time_to_trip``), and ends as soon as no check is in doubt. A check still failing at the end of
    the extension (one that keeps flapping) is a trip: the safe verdict is the release that worked.
    """
    loop = asyncio.get_running_loop()
    tasks = {asyncio.ensure_future(m.watch()): m for m in monitors}
    aborted = asyncio.ensure_future(abort.wait())
    deadline = loop.time() + seconds
    extension_end: float | None = None
    announced = False
    try:
        while True:
            timeout = max(deadline - loop.time(), 0)
            done, _ = await asyncio.wait({*tasks, aborted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if aborted in done:
                return ""
            for task in done:
                exc = task.exception()
                if exc is not None:
                    # A monitor that cannot run is reported, not mistaken for a healthy release.
                    return f"{tasks[task].name} monitor failed: {exc!r}"
                return task.result()
            if loop.time() < deadline:
                continue
            doubts = [m for m in monitors if getattr(m, "in_doubt", False)]
            if not doubts:
                return None
            if extension_end is None:
                extension_end = loop.time() + max(m.verdict_within for m in doubts)
            failing = [m for m in doubts if m.consecutive]
            if failing and not announced:
                # An attempt merely out is waited for quietly; a check failing is worth saying.
                announced = True
                extended(round(extension_end - loop.time(), 1), "; ".join(m.doubt() for m in failing))
            if loop.time() >= extension_end:
                if not failing:
                    return None  # only attempts out, and the last answers were good
                return ("health check still failing when probation's extension ended: "
                        + "; ".join(m.doubt() for m in failing))
            # Look again soon: a check in doubt settles when its attempt returns.
            deadline = min(loop.time() + EXTENSION_POLL_SEC, extension_end)
    finally:
        for task in (*tasks, aborted):
            task.cancel()
        # Bounded: a monitor that ignores its cancellation must not hold the deployment (and the
        # app's lock) forever; it is left behind, and said.
        _, stuck = await asyncio.wait({*tasks, aborted}, timeout=MONITOR_STOP_SEC)
        for task in stuck:
            name = tasks[task].name if task in tasks else "abort"
            log.error("the %s monitor did not stop within %g s; left running", name, MONITOR_STOP_SEC)
