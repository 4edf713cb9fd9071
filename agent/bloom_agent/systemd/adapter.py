"""The one door to systemd: start and stop units, read their state, hear about changes.

Real implementation over pystemd's D-Bus binding; the bus's file descriptor sits in the asyncio
loop, so job completion (JobRemoved) and unit changes (PropertiesChanged) arrive as events, never
by polling. Unit tests use a fake with the same interface (tests/unit/fake_systemd.py).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
from dataclasses import dataclass
from typing import Protocol

from bloom_agent.errors import SystemdCallFailed, SystemdUnavailable
from bloom_agent.systemd import cgroupstats

log = logging.getLogger(__name__)

SYSTEMD = b"org.freedesktop.systemd1"
# How often a job wait double-checks that its completion signal was not lost.
JOB_RECHECK_SEC = 2.0
MANAGER_PATH = b"/org/freedesktop/systemd1"


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
        """Has processes or is getting them: anything but stopped (inactive) or given up (failed)."""
        return self.active_state not in ("inactive", "failed")

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
    def _list_jobs(self) -> list:
        return self._manager.Manager.ListJobs()

    async def start(self, unit: str) -> str: ...
    async def stop(self, unit: str) -> str: ...
    async def daemon_reload(self) -> None: ...
    def reset_failed(self, unit: str) -> None: ...
    def enable(self, unit: str) -> None: ...
    def disable(self, unit: str) -> None: ...
    def status(self, unit: str) -> UnitStatus: ...
    def instances(self, pattern: str) -> list[UnitStatus]: ...
    def unit_metrics(self, unit: str) -> dict[str, int | None]: ...
    def host_stopping(self) -> bool: ...
    async def wait_for_change(self, unit: str, timeout: float) -> bool: ...


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NoSystemd:
    """Stands in when the agent runs where systemd is not reachable (by hand, in a build chroot)."""

    def __init__(self, why: str) -> None:
        self.why = why

    def _refuse(self, *args, **kwargs):
        raise SystemdUnavailable(f"systemd is not reachable over D-Bus ({self.why})",
                                 hint="app operations need the agent running under systemd")

    start = stop = daemon_reload = enable = disable = status = wait_for_change = unit_metrics = _refuse
    reset_failed = _refuse

    def instances(self, pattern: str) -> list[UnitStatus]:
        return []

    def host_stopping(self) -> bool:
        return False


def connect(cgroup_roots: cgroupstats.Roots) -> "PystemdSystemd | NoSystemd":
    try:
        return PystemdSystemd(cgroup_roots=cgroup_roots)
    except Exception as exc:  # no system bus, no permission: run on, and say so where it matters
        log.warning("systemd not reachable over D-Bus: %s; app operations are unavailable", exc)
        return NoSystemd(str(exc))


# sd-bus errors that mean the connection itself is gone, not that a call failed.
_DISCONNECTED_ERRNOS = {-errno.ENOTCONN, -errno.ECONNRESET, -errno.EPIPE, -errno.ESHUTDOWN}


def _disconnected(exc: Exception) -> bool:
    return getattr(exc, "errno", None) in _DISCONNECTED_ERRNOS or type(exc).__name__ == "DBusDisconnectedError"


def _reconnecting(method):
    """A call made again, once, on a new connection when the bus connection turns out to be gone."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not _disconnected(exc):
                raise
            self._reopen(exc)
            return method(self, *args, **kwargs)

    return call


class PystemdSystemd:
    """systemd over D-Bus. Create it inside the running loop; the bus is passed in or opened here."""

    def __init__(self, bus=None, cgroup_roots: cgroupstats.Roots = ()) -> None:
        self._cgroup_roots = cgroup_roots
        self._jobs: dict[bytes, asyncio.Future] = {}
        self._watchers: dict[bytes, set[asyncio.Event]] = {}
        self._callbacks: list = []
        self._matched_paths: set[bytes] = set()
        self._loop = asyncio.get_running_loop()
        self._own_bus = bus is None
        self._open(bus)

    def _open(self, bus=None) -> None:
        from pystemd.dbuslib import DBus
        from pystemd.systemd1 import Manager

        self._bus = bus or DBus()
        if bus is None:
            self._bus.open()
        self._manager = Manager(bus=self._bus)
        self._manager.load()
        self._manager.Manager.Subscribe()
        self._callbacks.clear()
        self._match(MANAGER_PATH, b"org.freedesktop.systemd1.Manager", b"JobRemoved", self._on_job_removed)
        for path in self._matched_paths:
            self._match(path, b"org.freedesktop.DBus.Properties", b"PropertiesChanged", self._on_properties)
        self._loop.add_reader(self._bus.get_fd(), self._dispatch)

    def _reopen(self, exc: Exception) -> None:
        """The bus connection is gone (the broker dropped it): open a new one with the same
        subscriptions. Signals sent meanwhile are lost; ``_job`` checks ListJobs for that."""
        if not self._own_bus:
            raise exc
        log.warning("the D-Bus connection to systemd was lost (%s); connecting again", exc)
        try:
            self._loop.remove_reader(self._bus.get_fd())
            self._bus.close()
        except Exception:
            pass  # it is gone already
        self._open()

    def _match(self, path: bytes, interface: bytes, member: bytes, method) -> None:
        # pystemd sets attributes on the callback (a bound method allows none) and does not keep a
        # reference to it: we must, or the bus calls freed memory.
        def callback(msg, error=None, userdata=None):
            method(msg)

        self._callbacks.append(callback)
        self._bus.match_signal(SYSTEMD, path, interface, member, callback)

    def close(self) -> None:
        self._loop.remove_reader(self._bus.get_fd())
        self._bus.close()

    def _dispatch(self) -> None:
        try:
            while not self._bus.process().is_empty():
                pass
        except Exception as exc:
            if not _disconnected(exc):
                raise
            self._reopen(exc)

    def _kick(self) -> None:
        # A synchronous call reads whatever else is on the socket into sd-bus's queue; the fd is then
        # no longer readable, so the loop would not wake for those signals. Process them soon.
        self._loop.call_soon_threadsafe(self._dispatch)

    def _on_job_removed(self, msg) -> None:
        msg.process_reply(True)
        _id, job, _unit, result = msg.body
        future = self._jobs.pop(job, None)
        if future is not None and not future.done():
            future.set_result(_text(result))

    def _on_properties(self, msg) -> None:
        msg.process_reply(True)
        for event in self._watchers.get(msg.headers.get("Path", b""), ()):
            event.set()

    async def _job(self, method_name: str, unit: str) -> str:
        future = asyncio.get_running_loop().create_future()
        # sd_bus_call queues signals instead of dispatching them, so JobRemoved cannot slip past
        # between the call's return and the registration below.
        try:
            job = getattr(self._manager.Manager, method_name)(unit.encode(), b"replace")
        except Exception as exc:
            if not _disconnected(exc):
                raise
            self._reopen(exc)
            job = getattr(self._manager.Manager, method_name)(unit.encode(), b"replace")
        self._jobs[job] = future
        self._kick()
        while True:
            try:
                async with asyncio.timeout(JOB_RECHECK_SEC):
                    return await asyncio.shield(future)
            except asyncio.TimeoutError:
                pass
            # Safety net: sd-bus may hold a JobRemoved in its queue with nothing left on the socket to
            # wake the loop. Drain the queue; if the job is gone and its signal still unseen, the
            # unit's state says how it ended.
            self._dispatch()
            if future.done():
                return future.result()
            listed = {bytes(row[4]) for row in self._list_jobs()}
            if job not in listed:
                self._jobs.pop(job, None)
                status = self.status(unit)
                wanted = status.active if method_name == "StartUnit" else not status.running
                log.warning("%s: job %s ended without a JobRemoved signal seen; unit is %s", unit,
                            job.decode(), status.active_state)
                return "done" if wanted else "failed"

    @_reconnecting
    def _list_jobs(self) -> list:
        return self._manager.Manager.ListJobs()

    async def start(self, unit: str) -> str:
        return await self._job("StartUnit", unit)

    async def stop(self, unit: str) -> str:
        return await self._job("StopUnit", unit)

    async def daemon_reload(self) -> None:
        """Reload takes from 0.1 s to seconds on a busy host, and longer on a slow one: done by
        systemctl in a child process, so the loop keeps answering requests and pinging the watchdog
        meanwhile. (Not pystemd in a thread: its calls hold the GIL until systemd answers.)"""
        proc = await asyncio.create_subprocess_exec(
            "systemctl", "daemon-reload", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise SystemdCallFailed(f"systemctl daemon-reload exited with {proc.returncode}: "
                                    f"{err.decode(errors='replace').strip()}",
                                    hint="see systemd's journal (journalctl -b _PID=1)")

    @_reconnecting
    def reset_failed(self, unit: str) -> None:
        try:
            self._manager.Manager.ResetFailedUnit(unit.encode())
        except Exception as exc:  # not loaded any more, or never failed: nothing to forget
            log.debug("reset-failed %s: %s", unit, exc)
        self._kick()

    @_reconnecting
    def enable(self, unit: str) -> None:
        self._manager.Manager.EnableUnitFiles([unit.encode()], False, True)
        self._kick()

    @_reconnecting
    def disable(self, unit: str) -> None:
        self._manager.Manager.DisableUnitFiles([unit.encode()], False)
        self._kick()

    def _unit(self, unit: str):
        from pystemd.systemd1 import Unit

        u = Unit(unit.encode(), bus=self._bus)
        u.load()
        self._kick()
        return u

    @_reconnecting
    def status(self, unit: str) -> UnitStatus:
        u = self._unit(unit)
        is_service = unit.endswith(".service") and u.Unit.LoadState == b"loaded"
        return UnitStatus(
            name=unit,
            load_state=_text(u.Unit.LoadState),
            active_state=_text(u.Unit.ActiveState),
            sub_state=_text(u.Unit.SubState),
            result=_text(u.Service.Result) if is_service else "",
            n_restarts=int(u.Service.NRestarts) if is_service else 0,
            main_pid=int(u.Service.MainPID) if is_service else 0,
            exec_main_status=int(u.Service.ExecMainStatus) if is_service else 0,
        )

    def host_stopping(self) -> bool:
        """Is the host shutting down? Then units stop because of it, not because they fail."""
        try:
            return _text(self._manager.Manager.SystemState) == "stopping"
        except Exception as exc:
            # The bus going away is what a shutdown looks like from here; the caller waits a bounded
            # time for its own stop, so a passing hiccup only delays a verdict.
            log.warning("cannot read systemd's state (%s); treating it as a shutdown", exc)
            return True

    @_reconnecting
    def unit_metrics(self, unit: str) -> dict[str, int | None]:
        """The unit's cgroup memory and task count; None where accounting is off (systemd says 2^64-1)."""
        u = self._unit(unit)

        def known(value) -> int | None:
            value = int(value)
            return None if value >= 2**64 - 1 else value

        metrics = {"memory": known(u.Service.MemoryCurrent), "tasks": known(u.Service.TasksCurrent)}
        if None in metrics.values():
            fallback = cgroupstats.usage(_text(u.Service.ControlGroup), self._cgroup_roots)
            metrics = {k: v if v is not None else fallback[k] for k, v in metrics.items()}
        return metrics

    @_reconnecting
    def instances(self, pattern: str) -> list[UnitStatus]:
        listed = self._manager.Manager.ListUnitsByPatterns([], [pattern.encode()])
        return [self.status(_text(row[0])) for row in listed]

    async def wait_for_change(self, unit: str, timeout: float) -> bool:
        """Wait until systemd reports a property change on ``unit``, or ``timeout``; True if it changed."""
        path = self._unit(unit).path
        if path not in self._matched_paths:
            # One match per unit path: pystemd's match_signal does not take a wildcard path.
            self._match(path, b"org.freedesktop.DBus.Properties", b"PropertiesChanged", self._on_properties)
            self._matched_paths.add(path)
        event = asyncio.Event()
        self._watchers.setdefault(path, set()).add(event)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see healthchecks.run_check
                await event.wait()
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._watchers[path].discard(event)
            if not self._watchers[path]:
                del self._watchers[path]
