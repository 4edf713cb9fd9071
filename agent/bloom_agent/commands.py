"""Control commands. Each is a function (agent, caller, args) -> result; the table is the API."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable

from . import __version__
from .auth import Caller
from .errors import InvalidArguments

if TYPE_CHECKING:
    from .daemon import Agent

Handler = Callable[["Agent", Caller, dict[str, Any]], Any]


def _no_args(command: str, args: dict[str, Any]) -> None:
    if args:
        raise InvalidArguments(f"{command}: unexpected argument(s): {', '.join(sorted(args))}")


def status(agent: "Agent", caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
    _no_args("status", args)
    return {
        "agent": {
            "version": __version__,
            "pid": os.getpid(),
            "state": agent.state_text,
            "started_at": agent.started_at,
            "uptime_sec": round(time.monotonic() - agent.started_monotonic, 3),
            "config": str(agent.config.path),
            "config_loaded_at": agent.config_loaded_at,
            "state_db": str(agent.config.state_db),
            "starts": agent.store.agent_event_count("start"),
            "under_systemd": agent.notifier.enabled,
            "watchdog_interval_sec": agent.notifier.watchdog_interval,
        },
        "caller": {"user": caller.user, "uid": caller.uid},
        "apps": [],
    }


COMMANDS: dict[str, Handler] = {
    "status": status,
}
