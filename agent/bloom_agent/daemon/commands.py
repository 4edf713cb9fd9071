"""Control commands. Each is a coroutine (agent, caller, args, progress) -> result; the table is the API."""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from bloom_agent import __version__
from bloom_agent.control.auth import Caller
from bloom_agent.control.protocol import TextArgs
from bloom_agent.errors import InvalidArguments
from bloom_agent.store.releases import Upload

if TYPE_CHECKING:
    from bloom_agent.daemon.agent import Agent

Progress = Callable[[dict], None]
Handler = Callable[["Agent", Caller, dict[str, Any], Progress, Any], Awaitable[Any]]


class Args:
    """Typed access to a request's arguments; anything unexpected is refused by name."""

    def __init__(self, command: str, args: dict[str, Any], allowed: set[str]) -> None:
        unexpected = sorted(set(args) - allowed)
        if unexpected:
            raise InvalidArguments(f"{command}: unexpected argument(s): {', '.join(unexpected)}")
        self.command, self.args = command, args

    def get(self, name: str, kind: type, default: Any = None, required: bool = False) -> Any:
        if name not in self.args or self.args[name] is None:
            if required:
                raise InvalidArguments(f"{self.command}: missing argument {name!r}")
            return default
        value = self.args[name]
        if isinstance(self.args, TextArgs) and isinstance(value, str) and kind in (int, bool):
            value = self._from_text(name, value, kind)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidArguments(f"{self.command}: argument {name!r} must be {kind.__name__}")
        return value

    def _from_text(self, name: str, value: str, kind: type) -> int | bool:
        if kind is bool and value in ("true", "false"):
            return value == "true"
        if kind is int and re.fullmatch(r"-?[0-9]{1,18}", value):
            return int(value)
        raise InvalidArguments(f"{self.command}: argument {name!r} must be "
                               f"{'true or false' if kind is bool else 'an integer'}, got {value!r}")


async def status(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                 upload: Upload | None) -> dict[str, Any]:
    a = Args("status", args, {"app"})
    app = a.get("app", str)
    if app:
        return await agent.apps.app_status(app)
    return {
        "agent": {
            "version": __version__,
            "pid": os.getpid(),
            "state": agent.state_text,
            "started_at": agent.started_at,
            "uptime_sec": round(time.monotonic() - agent.started_monotonic, 3),
            "config": str(agent.config.path),
            "config_loaded_at": agent.config_loaded_at,
            "state_db": str(agent.paths.state_db),
            "starts": agent.store.agent_event_count("start"),
            "under_systemd": agent.notifier.enabled,
            "watchdog_interval_sec": agent.notifier.watchdog_interval,
            "systemd": agent.apps.systemd_problem() or "reachable",
            "loop": agent.loop_lag.report() if agent.loop_lag else None,
        },
        "caller": {"user": caller.user, "uid": caller.uid, "remote": caller.remote},
        "apps": await agent.apps.app_statuses(sorted(agent.apps.apps)),
        "app_errors": agent.apps.app_errors,
    }


async def reload(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                 upload: Upload | None) -> dict[str, Any]:
    Args("reload", args, set())
    ok = await agent.reload_config()
    return {"config_reloaded": ok, "apps": sorted(agent.apps.apps), "app_errors": agent.apps.app_errors,
            "app_warnings": agent.apps.app_warnings}


async def install(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                  upload: Upload | None) -> dict[str, Any]:
    a = Args("install", args, {"app", "filename", "version", "sha256", "strip_components", "check"})
    return await agent.apps.install(a.get("app", str, required=True), upload, a.get("filename", str),
                                    a.get("version", str), a.get("sha256", str), caller,
                                    strip=a.get("strip_components", int, 0), check=a.get("check", bool, False))


async def releases(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                   upload: Upload | None) -> list[dict]:
    a = Args("releases", args, {"app"})
    return agent.apps.release_rows(a.get("app", str, required=True))


async def remove(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                 upload: Upload | None) -> dict[str, Any]:
    a = Args("remove", args, {"app", "version"})
    return await agent.apps.remove(a.get("app", str, required=True), a.get("version", str, required=True), caller)


async def switch(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                 upload: Upload | None) -> dict[str, Any]:
    a = Args("switch", args, {"app", "version", "wait"})
    return await agent.apps.switch(a.get("app", str, required=True), a.get("version", str, required=True), caller,
                                   progress, wait=a.get("wait", bool, True))


async def deploy(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                 upload: Upload | None) -> dict[str, Any]:
    a = Args("deploy", args, {"app", "filename", "version", "sha256", "wait", "strip_components"})
    return await agent.apps.deploy(a.get("app", str, required=True), upload, a.get("filename", str),
                                   a.get("version", str), a.get("sha256", str), caller, progress,
                                   wait=a.get("wait", bool, True), strip=a.get("strip_components", int, 0))


async def rollback(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                   upload: Upload | None) -> dict[str, Any]:
    a = Args("rollback", args, {"app", "to", "wait"})
    return await agent.apps.rollback(a.get("app", str, required=True), a.get("to", str), caller, progress,
                                     wait=a.get("wait", bool, True))


async def history(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                  upload: Upload | None) -> list[dict]:
    a = Args("history", args, {"app", "limit"})
    return agent.apps.history(a.get("app", str, required=True), a.get("limit", int, 50))


async def app_remove(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                     upload: Upload | None) -> dict[str, Any]:
    a = Args("app-remove", args, {"app"})
    return await agent.apps.remove_app(a.get("app", str, required=True), caller)


async def app_relisten(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                       upload: Upload | None) -> dict[str, Any]:
    a = Args("app-relisten", args, {"app"})
    return await agent.apps.relisten(a.get("app", str, required=True), caller)


async def wait(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
               upload: Upload | None) -> dict[str, Any]:
    a = Args("wait", args, {"app"})
    return await agent.apps.wait(a.get("app", str, required=True), progress)


async def show(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
               upload: Upload | None) -> dict[str, Any]:
    a = Args("show", args, {"app", "deployment"})
    return agent.apps.show(a.get("app", str, required=True), a.get("deployment", int))


async def health(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                 upload: Upload | None) -> dict[str, Any]:
    a = Args("health", args, {"app"})
    return await agent.apps.health(a.get("app", str, required=True))


async def backup_list(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                      upload: Upload | None) -> list[dict]:
    a = Args("backup-list", args, {"app"})
    return agent.database.backups(a.get("app", str, required=True))


async def backup_create(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                        upload: Upload | None) -> dict[str, Any]:
    a = Args("backup-create", args, {"app"})
    return await agent.database.create(a.get("app", str, required=True), caller)


async def backup_restore(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                         upload: Upload | None) -> dict[str, Any]:
    a = Args("backup-restore", args, {"app", "backup"})
    return await agent.database.restore(a.get("app", str, required=True), a.get("backup", int, required=True), caller)


async def migrations(agent: "Agent", caller: Caller, args: dict[str, Any], progress: Progress,
                     upload: Upload | None) -> list[dict]:
    a = Args("migrations", args, {"app"})
    return agent.database.migrations(a.get("app", str, required=True))


# Commands whose request carries the release tarball (protocol.py: upload).
UPLOADS = frozenset({"install", "deploy"})

COMMANDS: dict[str, Handler] = {
    "health": health,
    "status": status,
    "reload": reload,
    "install": install,
    "releases": releases,
    "remove": remove,
    "switch": switch,
    "deploy": deploy,
    "rollback": rollback,
    "history": history,
    "show": show,
    "wait": wait,
    "app-remove": app_remove,
    "app-relisten": app_relisten,
    "backup-list": backup_list,
    "backup-create": backup_create,
    "backup-restore": backup_restore,
    "migrations": migrations,
}
