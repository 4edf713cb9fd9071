"""sd_notify for the agent itself: READY, STATUS, RELOADING, STOPPING and watchdog pings.

Every call is a no-op when systemd did not give us a NOTIFY_SOCKET (the agent run by hand).
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_interval = _watchdog_interval(env)

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        self._send("RELOADING=1\nSTATUS=reloading configuration")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")


def _watchdog_interval(env) -> float | None:
    """Seconds between pings: half of WatchdogSec, as sd_watchdog_enabled(3) recommends."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
