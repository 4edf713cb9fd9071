"""The database side of a switch: a backup before the migrations, the migrations themselves, and
undoing them by the app's rollback strategy. The switcher decides when; this module does the work and
records it (backups, migrations) so that an agent killed half-way knows what there is to undo.

Every command runs as the app's user in a release's directory, with the app's environment and:

    BLOOM_APP, BLOOM_VERSION, BLOOM_RELEASE_DIR   the release the command belongs to
    BLOOM_DATABASE_URL                            database.url
    BLOOM_MIGRATE_TO, BLOOM_MIGRATE_TO_DIR        migrate_down only: the release to go back to
"""

from __future__ import annotations

import logging
import pwd
import time
from datetime import datetime
from pathlib import Path
from typing import Awaitable, Callable

from bloom_agent.config.apps import AppConfig
from bloom_agent.database.backends import Backend, backend_for, last_lines
from bloom_agent.database.shelf import BackupShelf
from bloom_agent.errors import DatabaseError
from bloom_agent.store.state import StateStore, utcnow
from bloom_agent.watch.command import RunAs, run_shell

log = logging.getLogger(__name__)

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# States of a migration record: what a rollback still has to undo.
TO_UNDO = ("running", "applied", "failed")


def taken_at_text(backup: dict) -> str:
    return datetime.fromisoformat(backup["taken_at"]).strftime("%Y-%m-%d %H:%M:%S UTC")


class DatabaseGuard:
    def __init__(self, store: StateStore, state_dir: Path,
                 backend: Callable[..., Backend] = backend_for, run: Callable[..., Awaitable] = run_shell) -> None:
        self.store = store
        self.state_dir = state_dir
        self.backend = backend
        self.run = run

    # -- the pieces ---------------------------------------------------------------------------

    def shelf(self, app: AppConfig) -> BackupShelf:
        return BackupShelf(app.database.backups_in(self.state_dir, app.name), app.database.min_free_bytes)

    def _backend(self, app: AppConfig) -> Backend:
        return self.backend(app.database, RunAs(app.user, app.group))

    def environment(self, app: AppConfig, version: str, release_dir: Path, **extra: str) -> dict[str, str]:
        env = {"PATH": BASE_PATH, "LANG": "C.UTF-8"}
        try:
            home = pwd.getpwnam(app.user).pw_dir if app.user else "/"
        except KeyError:
            raise DatabaseError(f"user {app.user!r} of app {app.name} does not exist",
                                hint="create it, or change 'user' in the app file") from None
        env.update(HOME=home, USER=app.user, LOGNAME=app.user)
        env.update(app.environment)
        env.update(BLOOM_APP=app.name, BLOOM_VERSION=version, BLOOM_RELEASE_DIR=str(release_dir))
        if app.database:
            env["BLOOM_DATABASE_URL"] = app.database.url
            if app.database.passfile:
                env["PGPASSFILE"] = app.database.passfile
        env.update(extra)
        return env

    async def command(self, app: AppConfig, what: str, command: str, version: str, release_dir: Path,
                      timeout: float, **extra: str) -> None:
        """Run one of the app's commands in a release; DatabaseError with its last lines if it fails. Its
        whole output (up to the cap) goes to the journal."""
        env = self.environment(app, version, release_dir, **extra)
        began = time.monotonic()
        ran = await self.run(command, env=env, timeout=timeout, run_as=RunAs(app.user, app.group, str(release_dir)))
        seconds = time.monotonic() - began
        output = ran.output.strip()
        if ran.returncode == 0:
            log.info("%s: %s of %s done in %.1f s%s", app.name, what, version, seconds,
                     f":\n{output}" if output else "", extra={"BLOOM_APP": app.name, "BLOOM_VERSION": version})
            return
        log.error("%s: %s of %s failed after %.1f s:\n%s", app.name, what, version, seconds, output or "(no output)",
                  extra={"BLOOM_APP": app.name, "BLOOM_VERSION": version})
        if ran.returncode is None:
            raise DatabaseError(f"{what} ({command!r}) did not finish within {timeout:g} s: {last_lines(output)}")
        raise DatabaseError(f"{what} ({command!r}) exited with status {ran.returncode}: {last_lines(output)}")

    # -- before a switch ----------------------------------------------------------------------

    async def pending(self, app: AppConfig, version: str, release_dir: Path) -> bool:
        """Whether the release has migrations to apply; true without a ``pending`` command."""
        db = app.database
        if not db.pending:
            return True
        env = self.environment(app, version, release_dir)
        ran = await self.run(db.pending, env=env, timeout=db.migrate_timeout_sec,
                             run_as=RunAs(app.user, app.group, str(release_dir)))
        if ran.returncode in (0, 1):
            return ran.returncode == 0
        raise DatabaseError(f"database.pending ({db.pending!r}) should exit 0 (pending) or 1 (none), "
                            f"exited {ran.returncode if ran.returncode is not None else 'at its time limit'}: "
                            f"{last_lines(ran.output)}")

    async def take_backup(self, app: AppConfig, deployment: int | None, version: str | None, label: str) -> dict:
        """A whole, recorded backup, or DatabaseError with nothing left behind."""
        db = app.database
        shelf = self.shelf(app)
        shelf.prepare()
        backend = self._backend(app)
        partial = shelf.partial(app.name, label, backend.suffix)
        taken_at, began = utcnow(), time.monotonic()
        try:
            schema = await backend.schema_digest(db.backup_timeout_sec)
            await backend.dump(partial, db.backup_timeout_sec)
            path, size, sha256 = shelf.seal(partial)
        except OSError as exc:
            shelf.discard(partial)
            raise DatabaseError(f"backup of {app.name} into {shelf.directory} failed: {exc.strerror or exc}",
                                hint="free space there, or set database.backup_dir elsewhere") from exc
        except BaseException:
            shelf.discard(partial)
            raise
        seconds = time.monotonic() - began
        backup_id = self.store.add_backup(app.name, deployment, version, str(path), size, sha256, schema, taken_at,
                                          seconds)
        log.info("%s: backup %d taken in %.1f s: %s (%d bytes, sha256 %s)", app.name, backup_id, seconds, path, size,
                 sha256[:12], extra={"BLOOM_APP": app.name, "BLOOM_BACKUP": backup_id})
        return self.store.backup(backup_id)

    async def migrate(self, app: AppConfig, migration: int, version: str, release_dir: Path) -> None:
        try:
            await self.command(app, "migration", app.database.migrate, version, release_dir,
                               app.database.migrate_timeout_sec)
        except DatabaseError as err:
            self.store.set_migration_state(migration, "failed", err.message)
            raise
        self.store.set_migration_state(migration, "applied")

    # -- undoing ------------------------------------------------------------------------------

    async def undo(self, app: AppConfig, migrations: list[dict], release_dir: Callable[[str], Path],
                   stop_writers: Callable[[], Awaitable[None]]) -> str:
        """Undo ``migrations`` (newest first) by the app's strategy. ``stop_writers`` is awaited before a
        restore: no release may write while the backup goes back. Returns what was done, for the outcome;
        raises DatabaseError when the database could not be brought back."""
        todo = [m for m in migrations if m["state"] in TO_UNDO]
        if not todo:
            return ""
        strategy = app.database.rollback_strategy
        if strategy == "skip":
            for m in todo:
                self.store.set_migration_state(m["id"], "kept", "rollback_strategy = skip")
            return "database left as it is (rollback_strategy = skip)"
        down_failure = ""
        if strategy == "down_first":
            try:
                for m in todo:
                    await self._migrate_down(app, m, release_dir)
                return "migrations reverted by migrate_down to " + (todo[-1]["from_version"] or "none")
            except DatabaseError as err:
                down_failure = err.message
                log.error("%s: migrate_down failed, restoring the backup instead: %s", app.name, err.message,
                          extra={"BLOOM_APP": app.name})
        backup_id = todo[-1]["backup"]
        backup = self.store.backup(backup_id) if backup_id else None
        if backup is None or backup["deleted_at"]:
            why = f"migrate_down failed ({down_failure}) and " if down_failure else ""
            raise DatabaseError(f"{why}there is no backup from before the migration of {todo[-1]['version']} "
                                f"to restore", hint="restore one by hand (bloomctl backup list / backup restore)")
        await stop_writers()
        text = await self.restore(app, backup)
        for m in todo:
            self.store.set_migration_state(m["id"], "undone", text)
        return (f"migrate_down failed ({down_failure}); " if down_failure else "") + text

    async def _migrate_down(self, app: AppConfig, migration: dict, release_dir: Callable[[str], Path]) -> None:
        version, target = migration["version"], migration["from_version"] or ""
        here = release_dir(version)
        if not here.is_dir():
            raise DatabaseError(f"release {version}, whose migrate_down would run, is no longer installed")
        await self.command(app, "migrate_down", app.database.migrate_down, version, here,
                           app.database.migrate_timeout_sec, BLOOM_MIGRATE_TO=target,
                           BLOOM_MIGRATE_TO_DIR=str(release_dir(target)) if target else "")
        self.store.set_migration_state(migration["id"], "undone", f"migrate_down to {target or 'none'}")

    async def restore(self, app: AppConfig, backup: dict) -> str:
        """Put a backup back and check that the schema is the backup's."""
        db = app.database
        path = Path(backup["path"])
        BackupShelf.verify(path, backup["sha256"])
        backend = self._backend(app)
        began = time.monotonic()
        await backend.restore(path, db.backup_timeout_sec)
        schema = await backend.schema_digest(db.backup_timeout_sec)
        if schema != backup["schema_sha256"]:
            raise DatabaseError(f"restored backup {backup['id']} ({path}), but the schema differs from the one "
                                f"backed up", hint="look at the database before starting a release on it")
        log.info("%s: backup %d restored in %.1f s", app.name, backup["id"], time.monotonic() - began,
                 extra={"BLOOM_APP": app.name, "BLOOM_BACKUP": backup["id"]})
        return f"restored backup {backup['id']} taken at {taken_at_text(backup)}; writes since then are gone"

    # -- retention ----------------------------------------------------------------------------

    def prune(self, app: AppConfig, protected: set[int]) -> list[dict]:
        """Keep the newest keep_backups and every backup in ``protected`` (those a rollback may need);
        returns the ones removed."""
        removed = []
        for backup in self.store.backups(app.name)[app.database.keep_backups:]:
            if backup["id"] in protected:
                continue
            self.shelf(app).discard(Path(backup["path"]))
            self.store.backup_deleted(backup["id"])
            removed.append(backup)
        return removed

    def needed_backups(self, app: AppConfig, last_good: str | None) -> set[int]:
        """Backups a rollback may restore: the newest applied migration's (rolling back the current
        release), those of migrations applied since the last good release began serving, and those of
        migrations in flight or failed and not yet undone."""
        migrations = self.store.migrations(app.name)
        needed = {m["backup"] for m in migrations if m["state"] in ("running", "failed") and m["backup"]}
        applied = [m for m in migrations if m["state"] == "applied" and m["backup"]]
        if applied:
            needed.add(applied[0]["backup"])
        if last_good:
            needed |= {m["backup"] for m in self.store.applied_since(app.name, last_good) if m["backup"]}
        return needed
