"""What an operator does to an app's database by hand: list, take and restore backups, and see the
migrations. Each holds the app like a switch does, so none of it runs beside a deployment."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bloom_agent.control.auth import Caller
from bloom_agent.database.guard import DatabaseGuard, taken_at_text
from bloom_agent.errors import DatabaseError, ReleaseError
from bloom_agent.store import versions

if TYPE_CHECKING:
    from bloom_agent.config.apps import AppConfig
    from bloom_agent.deploy.manager import AppManager

log = logging.getLogger(__name__)


def _row(backup: dict) -> dict:
    return {"id": backup["id"], "deployment": backup["deployment"], "version": backup["version"],
            "path": backup["path"], "size": backup["size"], "sha256": backup["sha256"],
            "taken_at": backup["taken_at"], "seconds": backup["seconds"]}


class DatabaseOperations:
    def __init__(self, manager: "AppManager", guard: DatabaseGuard) -> None:
        self.manager = manager
        self.guard = guard

    def _app(self, name: str) -> "AppConfig":
        app = self.manager.app(name)
        if app.database is None:
            raise DatabaseError(f"{name} has no [database] table in {app.path}",
                                hint="see: man bloom-agent.toml, or docs/database.md")
        return app

    def backups(self, name: str) -> list[dict]:
        self._app(name)
        return [_row(b) for b in self.manager.store.backups(name)]

    def migrations(self, name: str) -> list[dict]:
        self._app(name)
        return [{"id": m["id"], "deployment": m["deployment"], "version": m["version"], "from": m["from_version"],
                 "backup": m["backup"], "state": m["state"], "detail": m["detail"], "started_at": m["started_at"],
                 "finished_at": m["finished_at"]} for m in self.manager.store.migrations(name)]

    async def create(self, name: str, caller: Caller) -> dict:
        app = self._app(name)
        with self.manager.holding(name, "backup", caller.user):
            current = self.manager.store.app_state(name)["current"]
            backup = await self.guard.take_backup(app, None, current, "manual")
            self.guard.prune(app, self.guard.needed_backups(app, self.manager.store.app_state(name)["last_good"])
                             | {backup["id"]})
        log.info("%s: backup %d taken by %s", name, backup["id"], caller.label, extra={"BLOOM_APP": name})
        return _row(backup)

    async def restore(self, name: str, backup_id: int, caller: Caller) -> dict:
        """Stop the serving release, put the backup back, start it again: no release writes while the
        backup goes back, and the socket holds new connections meanwhile."""
        app = self._app(name)
        backup = self.manager.store.backup(backup_id)
        if backup is None or backup["app"] != name or backup["deleted_at"]:
            raise DatabaseError(f"{name} has no backup {backup_id}", hint=f"see: bloomctl backup list {name}")
        if not Path(backup["path"]).is_file():
            raise DatabaseError(f"backup {backup_id} is recorded but {backup['path']} is gone")
        with self.manager.holding(name, "restore", caller.user):
            current = self.manager.store.app_state(name)["current"]
            unit = app.instance_unit(versions.instance(current)) if current else None
            dep = self.manager.store.begin_deployment(name, "restore", current or "-", None, "restoring", caller.label)
            try:
                if unit:
                    await self.manager.switcher.retire(unit)
                text = await self.guard.restore(app, backup)
            except DatabaseError as err:
                self.manager.store.finish_deployment(dep, "failed", "failed", err.message)
                raise
            finally:
                if unit and await self.manager.systemd.start(unit) != "done":
                    log.error("%s: %s did not start again after the restore", name, unit, extra={"BLOOM_APP": name})
            self.manager.store.finish_deployment(dep, "done", "done", text)
        log.warning("%s: %s by %s", name, text, caller.label, extra={"BLOOM_APP": name})
        if unit and not (await self.manager.systemd.status(unit)).active:
            raise ReleaseError(f"{text}, but {current} did not start again", hint=f"see: journalctl -u {unit}")
        return {"app": name, "backup": backup_id, "taken_at": taken_at_text(backup), "restored": text,
                "serving": current}
