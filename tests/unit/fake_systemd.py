"""An in-memory systemd with the adapter's interface, for fast tests of the switch logic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bloom_agent.systemd.adapter import UnitStatus


@dataclass
class FakeUnit:
    active_state: str = "inactive"
    sub_state: str = "dead"
    result: str = "success"
    n_restarts: int = 0
    main_pid: int = 0
    exec_main_status: int = 0


@dataclass
class FakeSystemd:
    # unit name -> job result its start gets ("done", "timeout", "failed", ...)
    start_results: dict[str, str] = field(default_factory=dict)
    units: dict[str, FakeUnit] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    reloads: int = 0
    _changes: dict[str, asyncio.Event] = field(default_factory=dict)
    _next_pid: int = 1000

    def unit(self, name: str) -> FakeUnit:
        return self.units.setdefault(name, FakeUnit())

    async def start(self, unit: str) -> str:
        self.calls.append(("start", unit))
        u = self.unit(unit)
        if u.active_state == "active":
            return "done"
        result = self.start_results.get(unit, "done")
        if result == "done":
            self._next_pid += 1
            u.active_state, u.sub_state, u.main_pid, u.result = "active", "running", self._next_pid, "success"
        else:
            u.active_state, u.sub_state, u.main_pid, u.result = "failed", "failed", 0, result
        self._changed(unit)
        return result

    async def stop(self, unit: str) -> str:
        self.calls.append(("stop", unit))
        u = self.unit(unit)
        u.active_state, u.sub_state, u.main_pid = "inactive", "dead", 0
        self._changed(unit)
        return "done"

    async def daemon_reload(self) -> None:
        self.calls.append(("daemon-reload", ""))
        self.reloads += 1

    async def reset_failed(self, unit: str) -> None:
        self.calls.append(("reset-failed", unit))
        u = self.unit(unit)
        if u.active_state == "failed":
            u.active_state, u.sub_state, u.result = "inactive", "dead", "success"

    async def enable(self, unit: str) -> None:
        self.calls.append(("enable", unit))

    async def disable(self, unit: str) -> None:
        self.calls.append(("disable", unit))

    async def status(self, unit: str) -> UnitStatus:
        u = self.unit(unit)
        return UnitStatus(unit, "loaded", u.active_state, u.sub_state, u.result, u.n_restarts, u.main_pid,
                          u.exec_main_status)

    metrics: dict[str, dict[str, int | None]] = field(default_factory=dict)

    stopping: bool = False

    async def host_stopping(self) -> bool:
        return self.stopping

    async def unit_metrics(self, unit: str) -> dict[str, int | None]:
        return self.metrics.get(unit, {"memory": 10_000_000, "tasks": 3})

    async def instances(self, pattern: str) -> list[UnitStatus]:
        prefix = pattern.split("*", 1)[0]
        return [await self.status(n) for n, u in self.units.items()
                if n.startswith(prefix) and u.active_state != "inactive"]

    async def active_states(self, patterns: list[str]) -> dict[str, str]:
        prefixes = [p.split("*", 1)[0] for p in patterns]
        return {n: u.active_state for n, u in self.units.items()
                if u.active_state != "inactive" and any(n.startswith(p) for p in prefixes)}

    async def wait_for_change(self, unit: str, timeout: float) -> bool:
        event = self._changes.setdefault(unit, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            event.clear()

    closed: bool = False

    def close(self) -> None:
        self.closed = True

    def _changed(self, unit: str) -> None:
        if unit in self._changes:
            self._changes[unit].set()

    # -- faults -------------------------------------------------------------------------------

    def crash(self, unit: str, *, restarts: bool = True) -> None:
        """The main process dies; with Restart= systemd brings it back and counts it."""
        u = self.unit(unit)
        if restarts:
            u.n_restarts += 1
            u.result = "exit-code"
        else:
            u.active_state, u.sub_state, u.result = "failed", "failed", "exit-code"
        self._changed(unit)

    def started(self, unit: str) -> bool:
        return ("start", unit) in self.calls


class FakeJournal:
    """Stands in for the journal monitor; ``entries`` are fed to a real JournalMonitor's counting logic."""

    entries: list[dict] = []

    def __init__(self, unit: str, max_per_minute: int, patterns, since=None) -> None:
        from bloom_agent.watch.monitors import JournalMonitor

        self.name = "journal"
        self._real = JournalMonitor(unit, max_per_minute, patterns, since)

    @property
    def rate(self) -> int:
        return self._real.rate

    async def watch(self) -> str:
        import time

        for entry in list(self.entries):
            # as the real reader's match on the unit would find it: logged by the release
            trip = self._real.feed({"_SYSTEMD_UNIT": self._real.unit, **entry}, time.monotonic())
            if trip:
                return trip
        await asyncio.Event().wait()
        return ""
