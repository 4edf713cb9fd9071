"""Putting a changed app socket (its ``listen`` addresses, its socket settings) in place.

A running release keeps the listening descriptors it was given at start: a release only ever serves
new addresses as a new process. What systemd can do to the socket unit decides the way:

- ``drop`` (addresses only removed): after a daemon-reload systemd keeps the descriptors of the
  addresses that stay and lets go of the others; the socket is never closed, connections to the
  addresses that stay wait in its queue while the release restarts, and the removed ones close when
  the process that still holds them exits;
- ``rebind`` (anything added or any other setting changed): systemd opens addresses and applies
  socket settings only when the socket starts, so it is stopped (with the release, which
  ``Requires=`` it) and started again; nothing listens in between, and connection attempts are
  refused for that moment.

``bloomctl app relisten`` restarts the serving release on the new socket; a switch applies a pending
change before it starts the new release, which then inherits the new socket (a ``drop`` costs that
switch nothing; a ``rebind`` stops the old release first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from bloom_agent.config.apps import AppConfig
from bloom_agent.errors import ListenError
from bloom_agent.systemd.adapter import Systemd
from bloom_agent.systemd.unitfiles import UnitWriter

log = logging.getLogger(__name__)


@dataclass
class Relistened:
    app: str
    way: str                       # unchanged, written (the socket was not running), drop, rebind
    listen: tuple[str, ...]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    release: str | None = None     # the unit restarted on the new socket
    not_listening_sec: float | None = None   # rebind: the socket closed until it listened again
    not_answering_sec: float | None = None   # the release stopped until it was up again
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        addresses = ", ".join(self.listen)
        if self.way == "unchanged":
            return f"{self.app}: the socket already listens on {addresses} as the app file says; nothing to do"
        if self.way == "written":
            return f"{self.app}: socket unit written; it listens on {addresses} when it starts (it was not running)"
        restarted = ""
        if self.release:
            restarted = f"; {self.release} restarted on it and answered nothing for {self.not_answering_sec:.3f} s"
        if self.way == "drop":
            return (f"{self.app}: stopped listening on {', '.join(self.removed)}; {addresses} never closed "
                    f"(connections waited in the queue, none was refused){restarted}")
        return (f"{self.app}: socket stopped and started again on {addresses}: nothing listened for "
                f"{self.not_listening_sec:.3f} s (connection attempts were refused meanwhile){restarted}")

    def as_dict(self) -> dict:
        return {"app": self.app, "way": self.way, "listen": list(self.listen), "added": list(self.added),
                "removed": list(self.removed), "release": self.release,
                "not_listening_sec": self.not_listening_sec, "not_answering_sec": self.not_answering_sec,
                "text": self.text()}


async def apply(systemd: Systemd, units: UnitWriter, app: AppConfig, serving: str | None,
                reload: Callable[[], Awaitable[None]], *, restart: bool) -> Relistened:
    """Bring APP.socket in line with the app file. ``serving``: the release that runs on the socket now;
    ``restart``: start it again on the new socket (relisten), or leave it to the switch that called."""
    change = units.socket_change(app)
    done = Relistened(app.name, change.way, app.listen, change.added, change.removed)
    if change.way == "unchanged":
        return done
    if not (await systemd.status(app.socket_unit)).active:
        units.write_socket(app)
        await reload()
        done.way = "written"
        return done
    running = serving is not None and (await systemd.status(serving)).running
    before = units.written_socket(app)
    if change.way == "drop":
        units.write_socket(app)
        await reload()  # systemd keeps the descriptors of the addresses that stay
        if running and restart:
            began = time.monotonic()
            await systemd.stop(serving)
            await _start_again(systemd, app, serving, "its socket lost the removed addresses")
            done.release, done.not_answering_sec = serving, round(time.monotonic() - began, 3)
        return done
    # Reloaded before the socket closes, so that nothing listens only for a stop and a start: meanwhile
    # the running socket keeps what it has (systemd warns that it is "not fully functional").
    units.write_socket(app)
    await reload()
    began = time.monotonic()
    if running:
        await systemd.stop(serving)
    await systemd.stop(app.socket_unit)
    closed = time.monotonic()
    if await systemd.start(app.socket_unit) != "done":
        why = (await systemd.status(app.socket_unit)).describe()
        await _put_back(systemd, units, app, before, reload, serving if running else None)
        raise ListenError(f"{app.name}: the new socket could not be opened ({why}); the old one listens again "
                          f"on {', '.join(change.old)}",
                          hint=f"see: journalctl -u {app.socket_unit}; fix listen in {app.path}, then: "
                               f"bloomctl reload && bloomctl app relisten {app.name}")
    done.not_listening_sec = round(time.monotonic() - closed, 3)
    if running and restart:
        await _start_again(systemd, app, serving, "it was stopped to rebind its socket")
        done.release, done.not_answering_sec = serving, round(time.monotonic() - began, 3)
    return done


async def _start_again(systemd: Systemd, app: AppConfig, unit: str, why: str) -> None:
    result = await systemd.start(unit)
    status = await systemd.status(unit)
    if result != "done" or not status.active:
        raise ListenError(f"{app.name}: {unit} did not start again ({why}): {status.describe()}",
                          hint=f"see: journalctl -u {unit}; then: bloomctl status {app.name}")


async def _put_back(systemd: Systemd, units: UnitWriter, app: AppConfig, text: str | None, reload,
                    serving: str | None) -> None:
    """The socket as it was, listening again, and the release that ran on it running again."""
    log.error("%s: the new socket could not be opened; putting the old one back", app.name)
    if text is not None:
        units.restore_socket(app, text)
    await reload()
    await systemd.reset_failed(app.socket_unit)
    await systemd.start(app.socket_unit)
    if serving is not None:
        await systemd.start(serving)
