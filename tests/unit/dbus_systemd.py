"""A private D-Bus broker with a small systemd on it: the real adapter (DbusSystemd) talks real D-Bus
to it, so its wire format, job waits, signal matches and reconnection are tested without the host's
systemd. What systemd itself does with units is tested on real systemd (tests/integration)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from bloom_agent.systemd import adapter

BROKER_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class Broker:
    """dbus-daemon on a socket of our own; ``restart`` drops every connection, as a broker restart does."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "bus"
        self.config = directory / "bus.conf"
        self.config.write_text(BROKER_CONFIG.format(path=self.socket))
        self.address = f"unix:path={self.socket}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={self.config}",
                                      "--print-address"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc.stdout.readline()  # printed once it listens
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class SystemdOnBus:
    """Answers the Manager and Properties calls the adapter makes, from a table of units; jobs end
    when the test says so (``finish``), or at once when ``instant`` is set."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.units: dict[str, dict[str, object]] = {}
        self.jobs: dict[str, tuple[str, str]] = {}  # job path -> (unit, method)
        self.instant = True
        self.reload_gate: asyncio.Event | None = None
        self.calls: list[str] = []
        self._next_job = 0
        self.bus: MessageBus | None = None

    async def connect(self) -> "SystemdOnBus":
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._handle)
        await self.bus.request_name(adapter.SYSTEMD)
        return self

    def unit(self, name: str) -> dict[str, object]:
        return self.units.setdefault(name, {"LoadState": "loaded", "ActiveState": "inactive", "SubState": "dead",
                                            "Result": "success", "NRestarts": 0, "MainPID": 0, "ExecMainStatus": 0,
                                            "MemoryCurrent": 2**64 - 1, "TasksCurrent": 3, "ControlGroup": ""})

    def finish(self, job: str, result: str = "done") -> None:
        unit, method = self.jobs.pop(job)
        self.set_state(unit, "active" if method == "StartUnit" and result == "done" else "inactive")
        self.bus.send(Message.new_signal(adapter.MANAGER_PATH, adapter.MANAGER, "JobRemoved", "uoss",
                                         [int(job.rsplit("/", 1)[1]), job, unit, result]))

    def set_state(self, unit: str, active: str) -> None:
        self.unit(unit)["ActiveState"] = active
        self.bus.send(Message.new_signal(adapter.unit_path(unit), adapter.PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                         [adapter.UNIT, {"ActiveState": Variant("s", active)}, []]))

    def _handle(self, msg: Message):
        if msg.message_type != MessageType.METHOD_CALL or msg.destination != adapter.SYSTEMD:
            return False
        self.calls.append(msg.member)
        if msg.member == "Get":
            _interface, name = msg.body
            unit = next((u for u in self.units if adapter.unit_path(u) == msg.path), None)
            if msg.path == adapter.MANAGER_PATH:
                return Message.new_method_return(msg, "v", [Variant("s", "running")])
            props = self.units[unit] if unit else {"LoadState": "not-found", "ActiveState": "inactive",
                                                   "SubState": "dead"}
            value = props[name]
            kind = "s" if isinstance(value, str) else ("t" if name.endswith("Current") else "u")
            return Message.new_method_return(msg, "v", [Variant(kind, value)])
        if msg.member in ("StartUnit", "StopUnit"):
            self._next_job += 1
            job = f"/org/freedesktop/systemd1/job/{self._next_job}"
            self.jobs[job] = (msg.body[0], msg.member)
            self.bus.send(Message.new_method_return(msg, "o", [job]))
            if self.instant:
                self.finish(job)
            return True
        if msg.member == "ListJobs":
            rows = [[int(j.rsplit("/", 1)[1]), u, "start", "running", j, adapter.unit_path(u)]
                    for j, (u, _m) in self.jobs.items()]
            return Message.new_method_return(msg, "a(usssoo)", [rows])
        if msg.member == "ListUnitsByPatterns":
            prefixes = [pattern.split("*", 1)[0] for pattern in msg.body[1]]
            rows = [[u, "", "loaded", p["ActiveState"], p["SubState"], "", adapter.unit_path(u), 0, "", "/"]
                    for u, p in self.units.items() if any(u.startswith(prefix) for prefix in prefixes)]
            return Message.new_method_return(msg, "a(ssssssouso)", [rows])
        if msg.member == "Reload":
            if self.reload_gate is None:
                return Message.new_method_return(msg)
            gate = self.reload_gate

            async def later():
                await gate.wait()
                self.bus.send(Message.new_method_return(msg))
            asyncio.ensure_future(later())
            return True
        if msg.member in ("Subscribe", "ResetFailedUnit", "EnableUnitFiles", "DisableUnitFiles"):
            if msg.member == "ResetFailedUnit" and msg.body[0] not in self.units:
                return Message.new_error(msg, "org.freedesktop.systemd1.NoSuchUnit", f"Unit {msg.body[0]} not loaded.")
            return Message.new_method_return(msg, *{"EnableUnitFiles": ("ba(sss)", [True, []]),
                                                    "DisableUnitFiles": ("a(sss)", [[]])}.get(msg.member, ()))
        return Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", msg.member)


async def match_count(address: str, unique_name: str) -> int:
    """The broker's own count of the match rules a connection holds (dbus-daemon's Debug.Stats)."""
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus.Debug.Stats", member="GetConnectionStats",
                                       signature="s", body=[unique_name]))
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"GetConnectionStats: {reply.body}")
        return reply.body[0]["MatchRules"].value
    finally:
        bus.disconnect()


@contextlib.contextmanager
def broker():
    with tempfile.TemporaryDirectory() as tmp:
        b = Broker(Path(tmp)).start()
        try:
            yield b
        finally:
            b.stop()


def usable() -> bool:
    return os.path.exists("/usr/bin/dbus-daemon")
