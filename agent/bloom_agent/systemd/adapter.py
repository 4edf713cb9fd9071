"""The one door to systemd: start and stop units, read their state, hear about changes.

Real implementation over dbus-fast, an asyncio-native D-Bus client: every call is a message written
to the bus and a reply awaited on the agent's loop, so a busy systemd (a daemon-reload, a host with
hundreds of units) makes the caller wait, never the loop: requests, watchdog pings and other apps'
probations go on meanwhile. Job completion (JobRemoved) and unit changes (PropertiesChanged) arrive
as signals, never by polling. Unit tests use a fake with the same interface (tests/unit/fake_systemd.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Protocol

from bloom_agent.errors import SystemdCallFailed, SystemdUnavailable
from bloom_agent.systemd import cgroupstats

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = "/org/freedesktop/systemd1/unit/"
# systemd answers within this even when busy; a reload on a slow host may take longer.
CALL_TIMEOUT_SEC = 30.0
RELOAD_TIMEOUT_SEC = 120.0
# JobRemoved signals seen for jobs nobody waits on yet: a fast job can end before its caller's
# coroutine resumes with the job's path. Bounded: only the newest few can still be claimed.
UNCLAIMED_JOBS = 256
RECONNECT_DELAYS_SEC = (0.1, 0.5, 1.0, 2.0, 5.0)


def is_running(active_state: str) -> bool:
    """Has processes or is getting them: anything but stopped (inactive) or given up (failed)."""
    return active_state not in ("inactive", "failed")


@dataclass(frozen=True)
class UnitStatus:
    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str          # services: "success", "exit-code", "signal", "watchdog", "timeout", ...
    n_restarts: int
    main_pid: int
    exec_main_status: int

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def running(self) -> bool:
        return is_running(self.active_state)

    def describe(self) -> str:
        text = f"{self.name} is {self.active_state} ({self.sub_state})"
        if self.result:
            text += f", result {self.result}"
        if self.exec_main_status:
            text += f", exit status {self.exec_main_status}"
        if self.n_restarts:
            text += f", restarted {self.n_restarts} time(s)"
        return text


class Systemd(Protocol):
    async def start(self, unit: str) -> str: ...
    async def stop(self, unit: str) -> str: ...
    async def daemon_reload(self) -> None: ...
    async def reset_failed(self, unit: str) -> None: ...
    async def enable(self, unit: str) -> None: ...
    async def disable(self, unit: str) -> None: ...
    async def status(self, unit: str) -> UnitStatus: ...
    async def instances(self, pattern: str) -> list[UnitStatus]: ...
    async def active_states(self, patterns: list[str]) -> dict[str, str]: ...
    async def unit_metrics(self, unit: str) -> dict[str, int | None]: ...
    async def host_stopping(self) -> bool: ...
    async def wait_for_change(self, unit: str, timeout: float) -> bool: ...
    def close(self) -> None: ...


class NoSystemd:
    """Stands in when the agent runs where systemd is not reachable (by hand, in a build chroot)."""

    def __init__(self, why: str) -> None:
        self.why = why

    async def _refuse(self, *args, **kwargs):
        raise SystemdUnavailable(f"systemd is not reachable over D-Bus ({self.why})",
                                 hint="app operations need the agent running under systemd")

    start = stop = daemon_reload = enable = disable = status = wait_for_change = unit_metrics = _refuse
    reset_failed = _refuse

    async def instances(self, pattern: str) -> list[UnitStatus]:
        return []

    async def active_states(self, patterns: list[str]) -> dict[str, str]:
        return {}

    async def host_stopping(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def connect(cgroup_roots: cgroupstats.Roots) -> "DbusSystemd | NoSystemd":
    try:
        return await DbusSystemd.connect(cgroup_roots=cgroup_roots)
    except Exception as exc:  # no system bus, no permission: run on, and say so where it matters
        log.warning("systemd not reachable over D-Bus: %s; app operations are unavailable", exc)
        return NoSystemd(str(exc) or type(exc).__name__)


def unit_path(name: str) -> str:
    """The unit's object path, escaped as systemd escapes it (sd_bus_path_encode): every byte but
    ASCII letters and digits, and a leading digit, becomes _XX. Reading a property on that path loads
    the unit, so no LoadUnit round trip is needed."""
    out = []
    for i, byte in enumerate(name.encode()):
        char = chr(byte)
        if char.isascii() and char.isalnum() and not (i == 0 and char.isdigit()):
            out.append(char)
        else:
            out.append(f"_{byte:02x}")
    return UNIT_PATH_PREFIX + ("".join(out) or "_")


def _match_rule(path: str, interface: str, member: str) -> str:
    return f"type='signal',sender='{SYSTEMD}',path='{path}',interface='{interface}',member='{member}'"


class DbusSystemd:
    """systemd over D-Bus, on the running loop. Build it with ``await DbusSystemd.connect()``.

    One connection, one message handler. The matches it holds are counted: one for JobRemoved, and
    one PropertiesChanged match per unit that someone is waiting on, removed when the last waiter
    leaves, so a long-running agent does not collect them."""

    def __init__(self, cgroup_roots: cgroupstats.Roots = (), address: str | None = None) -> None:
        self._cgroup_roots = cgroup_roots
        self._address = address
        self._bus = None
        self._closed = False
        self._jobs: dict[str, tuple[asyncio.Future, str, str]] = {}  # job path -> (future, unit, method)
        self._unclaimed: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._watchers: dict[str, set[asyncio.Event]] = {}  # unit path -> waiters
        self._opening = asyncio.Lock()
        self._keeper: asyncio.Task | None = None

    @classmethod
    async def connect(cls, cgroup_roots: cgroupstats.Roots = (), address: str | None = None) -> "DbusSystemd":
        systemd = cls(cgroup_roots, address)
        await systemd._open()
        return systemd

    # -- the connection --------------------------------------------------------------------------

    async def _open(self) -> None:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        bus = MessageBus(bus_address=self._address, bus_type=BusType.SYSTEM)
        await bus.connect()
        bus.add_message_handler(self._on_message)
        self._bus = bus
        try:
            # Not through the reconnecting path: this is the (re)connection.
            await self._call(MANAGER_PATH, MANAGER, "Subscribe", "", [], reconnect=False)
            await self._add_match(_match_rule(MANAGER_PATH, MANAGER, "JobRemoved"), reconnect=False)
            for path in list(self._watchers):
                await self._add_match(_match_rule(path, PROPERTIES, "PropertiesChanged"), reconnect=False)
        except BaseException:
            bus.disconnect()  # half subscribed is not connected: the next attempt starts over
            raise
        self._keeper = asyncio.get_running_loop().create_task(self._keep(bus))

    async def _keep(self, bus) -> None:
        """When the broker drops the connection, connect again with the same subscriptions (and keep
        trying while the bus is away), then settle the job waits whose JobRemoved went with it."""
        try:
            await bus.wait_for_disconnect()
            why = "closed by the bus"
        except Exception as exc:
            why = str(exc) or type(exc).__name__
        if self._closed:
            return
        log.warning("the D-Bus connection to systemd was lost (%s); connecting again", why)
        attempt = 0
        while not self._closed:
            try:
                await self._reconnect()
                await self._settle_jobs()
                return
            except Exception as exc:
                if attempt % len(RECONNECT_DELAYS_SEC) == 0:
                    log.warning("connecting to systemd over D-Bus again failed (%s); retrying", exc)
                await asyncio.sleep(RECONNECT_DELAYS_SEC[min(attempt, len(RECONNECT_DELAYS_SEC) - 1)])
                attempt += 1

    async def _reconnect(self) -> None:
        """One attempt; a caller that finds the connection gone fails now rather than wait for the bus."""
        async with self._opening:
            if self._closed or (self._bus is not None and self._bus.connected):
                return  # someone else got there first
            await self._open()

    async def _settle_jobs(self) -> None:
        [rows] = await self._call(MANAGER_PATH, MANAGER, "ListJobs", "", [])
        listed = {row[4] for row in rows}
        for job, (future, unit, method) in list(self._jobs.items()):
            if job in listed or future.done():
                continue
            del self._jobs[job]
            status = await self.status(unit)
            wanted = status.active if method == "StartUnit" else not status.running
            log.warning("%s: job %s ended while the bus was away; unit is %s", unit, job, status.active_state)
            future.set_result("done" if wanted else "failed")

    def close(self) -> None:
        self._closed = True
        if self._keeper is not None:
            self._keeper.cancel()
        if self._bus is not None:
            self._bus.disconnect()

    @property
    def matches(self) -> int:
        """Match rules this connection holds on the bus (for the long-run benchmark and tests)."""
        return 1 + len(self._watchers)

    async def _call(self, path: str, interface: str, member: str, signature: str, body: list,
                    timeout: float = CALL_TIMEOUT_SEC, destination: str = SYSTEMD, reconnect: bool = True) -> list:
        from dbus_fast import Message, MessageType

        for attempt in (1, 2):
            if self._bus is None or not self._bus.connected:
                if not reconnect:
                    raise SystemdUnavailable(f"the D-Bus connection to systemd closed before {member}",
                                             hint="is dbus running? systemctl status dbus")
                await self._reconnect()
            bus = self._bus
            message = Message(destination=destination, path=path, interface=interface, member=member,
                              signature=signature, body=body)
            try:
                async with asyncio.timeout(timeout):
                    reply = await bus.call(message)
            except TimeoutError:
                raise SystemdCallFailed(f"systemd did not answer {member} within {timeout:.0f} s",
                                        hint="see systemd's journal (journalctl -b _PID=1)") from None
            except Exception as exc:  # the connection went away under the call: once more on a new one
                if attempt == 2 or self._closed or not reconnect:
                    raise SystemdUnavailable(f"the D-Bus connection to systemd failed during {member}: {exc}",
                                             hint="is dbus running? systemctl status dbus") from exc
                continue
            if reply.message_type == MessageType.ERROR:
                text = reply.body[0] if reply.body else reply.error_name
                raise SystemdCallFailed(f"{member} failed: {text} ({reply.error_name})",
                                        hint="see systemd's journal (journalctl -b _PID=1)")
            return reply.body
        raise AssertionError("unreachable")

    async def _add_match(self, rule: str, reconnect: bool = True) -> None:
        await self._call("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule],
                         destination="org.freedesktop.DBus", reconnect=reconnect)

    async def _remove_match(self, rule: str) -> None:
        try:
            await self._call("/org/freedesktop/DBus", "org.freedesktop.DBus", "RemoveMatch", "s", [rule],
                             destination="org.freedesktop.DBus")
        except Exception as exc:  # a connection lost since: its matches went with it
            log.debug("RemoveMatch %s: %s", rule, exc)

    def _on_message(self, msg) -> bool:
        from dbus_fast import MessageType

        if msg.message_type != MessageType.SIGNAL:
            return False
        if msg.member == "JobRemoved" and msg.interface == MANAGER:
            _id, job, _unit, result = msg.body
            waiting = self._jobs.pop(job, None)
            if waiting is None:
                self._unclaimed[job] = result
                while len(self._unclaimed) > UNCLAIMED_JOBS:
                    self._unclaimed.popitem(last=False)
            elif not waiting[0].done():
                waiting[0].set_result(result)
        elif msg.member == "PropertiesChanged" and msg.interface == PROPERTIES:
            for event in self._watchers.get(msg.path, ()):
                event.set()
        return False

    # -- jobs ------------------------------------------------------------------------------------

    async def _job(self, method: str, unit: str) -> str:
        [job] = await self._call(MANAGER_PATH, MANAGER, method, "ss", [unit, "replace"])
        result = self._unclaimed.pop(job, None)
        if result is not None:  # it ended before we got here
            return result
        future = asyncio.get_running_loop().create_future()
        self._jobs[job] = (future, unit, method)
        try:
            return await future
        finally:
            self._jobs.pop(job, None)

    async def start(self, unit: str) -> str:
        return await self._job("StartUnit", unit)

    async def stop(self, unit: str) -> str:
        return await self._job("StopUnit", unit)

    async def daemon_reload(self) -> None:
        """systemd answers Reload once the reload is done; meanwhile it answers no one else, but the
        agent's loop is only waiting for a reply, so it goes on serving."""
        await self._call(MANAGER_PATH, MANAGER, "Reload", "", [], timeout=RELOAD_TIMEOUT_SEC)

    async def reset_failed(self, unit: str) -> None:
        try:
            await self._call(MANAGER_PATH, MANAGER, "ResetFailedUnit", "s", [unit])
        except SystemdCallFailed as exc:  # not loaded any more, or never failed: nothing to forget
            log.debug("reset-failed %s: %s", unit, exc)

    async def enable(self, unit: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "EnableUnitFiles", "asbb", [[unit], False, True])

    async def disable(self, unit: str) -> None:
        await self._call(MANAGER_PATH, MANAGER, "DisableUnitFiles", "asb", [[unit], False])

    # -- properties ------------------------------------------------------------------------------

    async def _properties(self, path: str, interface: str, names: tuple[str, ...]) -> dict[str, Any]:
        """Several properties at once: the Gets go out together and their replies come back in one
        read, one round trip, without GetAll's hundred-odd values to decode."""
        replies: list[Awaitable] = [self._call(path, PROPERTIES, "Get", "ss", [interface, name]) for name in names]
        values = await asyncio.gather(*replies)
        return {name: value[0].value for name, value in zip(names, values)}

    async def status(self, unit: str) -> UnitStatus:
        u = await self._properties(unit_path(unit), UNIT, ("LoadState", "ActiveState", "SubState"))
        return await self._with_service(unit, u["LoadState"], u["ActiveState"], u["SubState"])

    async def _with_service(self, unit: str, load: str, active: str, sub: str) -> UnitStatus:
        """The unit's status from its states (read, or listed by ListUnitsByPatterns) and, for a loaded
        service, the service's own properties."""
        s = {"Result": "", "NRestarts": 0, "MainPID": 0, "ExecMainStatus": 0}
        if unit.endswith(".service") and load == "loaded":
            s = await self._properties(unit_path(unit), SERVICE, tuple(s))
        return UnitStatus(name=unit, load_state=load, active_state=active, sub_state=sub, result=s["Result"],
                          n_restarts=int(s["NRestarts"]), main_pid=int(s["MainPID"]),
                          exec_main_status=int(s["ExecMainStatus"]))

    async def host_stopping(self) -> bool:
        """Is the host shutting down? Then units stop because of it, not because they fail."""
        try:
            state = await self._properties(MANAGER_PATH, MANAGER, ("SystemState",))
            return state["SystemState"] == "stopping"
        except Exception as exc:
            # The bus going away is what a shutdown looks like from here; the caller waits a bounded
            # time for its own stop, so a passing hiccup only delays a verdict.
            log.warning("cannot read systemd's state (%s); treating it as a shutdown", exc)
            return True

    async def unit_metrics(self, unit: str) -> dict[str, int | None]:
        """The unit's cgroup memory and task count; None where accounting is off (systemd says 2^64-1)."""
        values = await self._properties(unit_path(unit), SERVICE, ("MemoryCurrent", "TasksCurrent", "ControlGroup"))

        def known(value) -> int | None:
            value = int(value)
            return None if value >= 2**64 - 1 else value

        metrics = {"memory": known(values["MemoryCurrent"]), "tasks": known(values["TasksCurrent"])}
        if None in metrics.values():
            fallback = await asyncio.to_thread(cgroupstats.usage, values["ControlGroup"], self._cgroup_roots)
            metrics = {k: v if v is not None else fallback[k] for k, v in metrics.items()}
        return metrics

    async def instances(self, pattern: str) -> list[UnitStatus]:
        [listed] = await self._call(MANAGER_PATH, MANAGER, "ListUnitsByPatterns", "asas", [[], [pattern]])
        # Each row carries the unit's load, active and sub state: only a service's own properties are read.
        return list(await asyncio.gather(*(self._with_service(row[0], row[2], row[3], row[4]) for row in listed)))

    async def active_states(self, patterns: list[str]) -> dict[str, str]:
        """Unit name -> ActiveState for every loaded unit matching any of the patterns: one call, however
        many apps and releases (the list carries each unit's state, so no unit is read on its own)."""
        if not patterns:
            return {}
        [listed] = await self._call(MANAGER_PATH, MANAGER, "ListUnitsByPatterns", "asas", [[], list(patterns)])
        return {row[0]: row[3] for row in listed}

    async def wait_for_change(self, unit: str, timeout: float) -> bool:
        """Wait until systemd reports a property change on ``unit``, or ``timeout``; True if it changed."""
        path = unit_path(unit)
        rule = _match_rule(path, PROPERTIES, "PropertiesChanged")
        event = asyncio.Event()
        waiters = self._watchers.setdefault(path, set())
        waiters.add(event)
        try:
            if len(waiters) == 1:
                await self._add_match(rule)
            async with asyncio.timeout(timeout):  # not wait_for: see healthchecks.run_check
                await event.wait()
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            waiters.discard(event)
            if not waiters and self._watchers.get(path) is waiters:
                del self._watchers[path]
                await self._remove_match(rule)
