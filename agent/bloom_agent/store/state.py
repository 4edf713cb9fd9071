"""The agent's persistent state: one SQLite database under the state directory.

WAL with synchronous=FULL: a record the agent has written survives the agent (or the host) dying
right after. The schema is versioned with ``PRAGMA user_version`` and only ever migrated forward,
so a package upgrade keeps everything.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bloom_agent.errors import StateError

MIGRATIONS = [
    # 1: the agent's own life: starts, reloads, stops.
    """
    CREATE TABLE agent_events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        version TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: apps, releases, deployments (the persisted state machine) and the history.
    """
    CREATE TABLE app_state (
        app TEXT PRIMARY KEY,
        current TEXT,
        last_good TEXT,
        degraded TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE releases (
        app TEXT NOT NULL,
        version TEXT NOT NULL,
        instance TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        installed_at TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (app, version)
    );
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        action TEXT NOT NULL,
        version TEXT NOT NULL,
        from_version TEXT,
        step TEXT NOT NULL,
        outcome TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        caller TEXT NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX deployments_app ON deployments (app, id);
    CREATE TABLE deployment_steps (
        deployment INTEGER NOT NULL REFERENCES deployments (id),
        at TEXT NOT NULL,
        step TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 3: the boot a deployment started in: after a reboot, a release still on probation is not trusted.
    """
    ALTER TABLE deployments ADD COLUMN boot_id TEXT NOT NULL DEFAULT '';
    """,
    # 4: database backups and the migrations each deployment ran, so that a rollback can undo them.
    """
    CREATE TABLE backups (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        deployment INTEGER REFERENCES deployments (id),
        version TEXT,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        schema_sha256 TEXT NOT NULL,
        taken_at TEXT NOT NULL,
        seconds REAL NOT NULL,
        deleted_at TEXT
    );
    CREATE INDEX backups_app ON backups (app, id);
    CREATE TABLE migrations (
        id INTEGER PRIMARY KEY,
        app TEXT NOT NULL,
        deployment INTEGER NOT NULL REFERENCES deployments (id),
        version TEXT NOT NULL,
        from_version TEXT,
        backup INTEGER REFERENCES backups (id),
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX migrations_app ON migrations (app, id);
    """,
]


def boot_id_from(path: Path) -> Callable[[], str]:
    """Reads the kernel's id of this boot (Paths.boot_id_file); empty where there is none."""

    def read() -> str:
        try:
            return path.read_text().strip()
        except OSError:
            return ""

    return read


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def seconds_between(earlier: str, later: str) -> float:
    """Between two of the store's timestamps (utcnow's form)."""
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


class StateStore:
    def __init__(self, path: Path, boot_id: Callable[[], str] = lambda: "") -> None:
        self.path = path
        self.boot_id = boot_id
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            # Created 0640 before SQLite opens it: SQLite gives its -wal and -shm files the database's mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o640))
            for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                if companion.exists():
                    os.chmod(companion, 0o640)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from exc

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StateError(
                f"state database {self.path} has schema {current}, newer than this agent knows ({len(MIGRATIONS)})",
                hint="a newer bloom-agent wrote it; install that version again instead of downgrading",
            )
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            # executescript() would commit on its own; one transaction per migration instead.
            with self._transaction():
                for statement in _statements(sql):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={version}")

    def record_agent_event(self, event: str, version: str, detail: str = "") -> None:
        self._db.execute(
            "INSERT INTO agent_events (at, event, version, detail) VALUES (?, ?, ?, ?)",
            (utcnow(), event, version, detail),
        )

    def agent_event_count(self, event: str) -> int:
        return self._db.execute("SELECT count(*) FROM agent_events WHERE event = ?", (event,)).fetchone()[0]

    def first_event_at(self) -> str | None:
        row = self._db.execute("SELECT at FROM agent_events ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    # -- apps and releases ----------------------------------------------------------------

    def app_state(self, app: str) -> dict:
        row = self._db.execute("SELECT current, last_good, degraded FROM app_state WHERE app = ?", (app,)).fetchone()
        return dict(row) if row else {"current": None, "last_good": None, "degraded": ""}

    def set_app_state(self, app: str, **changes) -> None:
        state = {**self.app_state(app), **changes}
        self._db.execute(
            "INSERT INTO app_state (app, current, last_good, degraded) VALUES (:app, :current, :last_good, :degraded) "
            "ON CONFLICT (app) DO UPDATE SET current = :current, last_good = :last_good, degraded = :degraded",
            {"app": app, **state},
        )

    def add_release(self, app: str, version: str, instance: str, sha256: str, size: int) -> None:
        self._db.execute(
            "INSERT INTO releases (app, version, instance, status, installed_at, sha256, size) VALUES (?, ?, ?, 'installed', ?, ?, ?)",
            (app, version, instance, utcnow(), sha256, size),
        )

    def release(self, app: str, version: str) -> dict | None:
        row = self._db.execute("SELECT * FROM releases WHERE app = ? AND version = ?", (app, version)).fetchone()
        return dict(row) if row else None

    def releases(self, app: str) -> list[dict]:
        return [dict(r) for r in self._db.execute("SELECT * FROM releases WHERE app = ? ORDER BY installed_at, rowid", (app,))]

    def set_release_status(self, app: str, version: str, status: str, reason: str = "") -> None:
        self._db.execute("UPDATE releases SET status = ?, reason = ? WHERE app = ? AND version = ?", (status, reason, app, version))

    def forget_app(self, app: str) -> None:
        """An app removed: its releases and state go; its history stays, for the record."""
        with self._transaction():
            self._db.execute("DELETE FROM releases WHERE app = ?", (app,))
            self._db.execute("DELETE FROM app_state WHERE app = ?", (app,))

    def delete_release(self, app: str, version: str) -> None:
        self._db.execute("DELETE FROM releases WHERE app = ? AND version = ?", (app, version))

    # -- deployments: every step is written before it is taken ------------------------------

    def begin_deployment(self, app: str, action: str, version: str, from_version: str | None, step: str, caller: str) -> int:
        cur = self._db.execute(
            "INSERT INTO deployments (app, action, version, from_version, step, caller, started_at, boot_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (app, action, version, from_version, step, caller, utcnow(), self.boot_id()),
        )
        return cur.lastrowid

    def record_step(self, deployment: int, step: str, detail: str = "") -> None:
        with self._transaction():
            self._db.execute("UPDATE deployments SET step = ? WHERE id = ?", (step, deployment))
            self._db.execute("INSERT INTO deployment_steps (deployment, at, step, detail) VALUES (?, ?, ?, ?)",
                             (deployment, utcnow(), step, detail))

    def set_deployment_reason(self, deployment: int, reason: str) -> None:
        self._db.execute("UPDATE deployments SET reason = ? WHERE id = ?", (reason, deployment))

    def finish_deployment(self, deployment: int, step: str, outcome: str, reason: str = "") -> None:
        with self._transaction():
            self._db.execute("UPDATE deployments SET step = ?, outcome = ?, reason = ?, finished_at = ? WHERE id = ?",
                             (step, outcome, reason, utcnow(), deployment))
            self._db.execute("INSERT INTO deployment_steps (deployment, at, step, detail) VALUES (?, ?, ?, ?)",
                             (deployment, utcnow(), step, reason))

    def deployment(self, deployment: int) -> dict | None:
        row = self._db.execute("SELECT * FROM deployments WHERE id = ?", (deployment,)).fetchone()
        return dict(row) if row else None

    def unfinished_deployments(self) -> list[dict]:
        return [dict(r) for r in self._db.execute("SELECT * FROM deployments WHERE finished_at IS NULL ORDER BY id")]

    def history(self, app: str, limit: int = 100) -> list[dict]:
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM deployments WHERE app = ? ORDER BY id DESC LIMIT ?", (app, limit))]

    def last_switch(self, app: str) -> dict | None:
        """The app's newest switch or rollback, finished or not."""
        row = self._db.execute("SELECT * FROM deployments WHERE app = ? AND action IN ('switch', 'rollback') "
                               "ORDER BY id DESC LIMIT 1", (app,)).fetchone()
        return dict(row) if row else None

    def serving_changes(self, app: str) -> list[dict]:
        """Switches and rollbacks that ended on their release, newest first: who served after whom."""
        return [dict(r) for r in self._db.execute(
            "SELECT version, from_version FROM deployments WHERE app = ? AND action IN ('switch', 'rollback') "
            "AND outcome = 'done' ORDER BY id DESC", (app,))]

    def last_finished_deployment(self, app: str) -> int | None:
        """The id of the app's newest deployment that ended (ids only grow; pruning removes old ones only)."""
        return self._db.execute("SELECT MAX(id) FROM deployments WHERE app = ? AND finished_at IS NOT NULL",
                                (app,)).fetchone()[0]

    def finished_switches(self, app: str) -> list[dict]:
        """Switches and rollbacks that ended, oldest first, with the time each spent in probation."""
        return [dict(r) for r in self._db.execute(
            "SELECT d.action, d.outcome, d.reason, d.started_at, d.finished_at, "
            "(SELECT (julianday(MIN(n.at)) - julianday(p.at)) * 86400 FROM deployment_steps n "
            " WHERE n.deployment = d.id AND n.rowid > p.rowid) AS probation_seconds "
            "FROM deployments d LEFT JOIN deployment_steps p ON p.deployment = d.id AND p.step = 'probation' "
            "WHERE d.app = ? AND d.action IN ('switch', 'rollback') AND d.finished_at IS NOT NULL "
            "AND d.outcome IN ('done', 'failed', 'rolled-back', 'degraded') "
            "GROUP BY d.id ORDER BY d.id", (app,))]

    # -- database backups and migrations ----------------------------------------------------

    def add_backup(self, app: str, deployment: int | None, version: str | None, path: str, size: int, sha256: str,
                   schema_sha256: str, taken_at: str, seconds: float) -> int:
        return self._db.execute(
            "INSERT INTO backups (app, deployment, version, path, size, sha256, schema_sha256, taken_at, seconds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (app, deployment, version, path, size, sha256, schema_sha256, taken_at, round(seconds, 3))).lastrowid

    def backup(self, backup: int) -> dict | None:
        row = self._db.execute("SELECT * FROM backups WHERE id = ?", (backup,)).fetchone()
        return dict(row) if row else None

    def backups(self, app: str) -> list[dict]:
        """The app's backups still on disk, newest first."""
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM backups WHERE app = ? AND deleted_at IS NULL ORDER BY id DESC", (app,))]

    def backup_deleted(self, backup: int) -> None:
        self._db.execute("UPDATE backups SET deleted_at = ? WHERE id = ?", (utcnow(), backup))

    def begin_migration(self, app: str, deployment: int, version: str, from_version: str | None,
                        backup: int | None) -> int:
        return self._db.execute(
            "INSERT INTO migrations (app, deployment, version, from_version, backup, state, started_at) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?)", (app, deployment, version, from_version, backup, utcnow())).lastrowid

    def set_migration_state(self, migration: int, state: str, detail: str = "") -> None:
        self._db.execute("UPDATE migrations SET state = ?, detail = ?, finished_at = ? WHERE id = ?",
                         (state, detail, utcnow(), migration))

    def migration_of(self, deployment: int) -> dict | None:
        row = self._db.execute("SELECT * FROM migrations WHERE deployment = ? ORDER BY id DESC LIMIT 1",
                               (deployment,)).fetchone()
        return dict(row) if row else None

    def migrations(self, app: str, limit: int = 100) -> list[dict]:
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM migrations WHERE app = ? ORDER BY id DESC LIMIT ?", (app, limit))]

    def applied_since(self, app: str, version: str) -> list[dict]:
        """Migrations still applied that came after ``version`` last began serving, newest first: what a
        rollback to ``version`` has to undo."""
        row = self._db.execute("SELECT MAX(id) FROM deployments WHERE app = ? AND version = ? AND outcome = 'done' "
                               "AND action IN ('switch', 'rollback')", (app, version)).fetchone()
        return [dict(r) for r in self._db.execute(
            "SELECT * FROM migrations WHERE app = ? AND state = 'applied' AND deployment > ? ORDER BY id DESC",
            (app, row[0] or 0))]

    def prune_history(self, app: str, keep: int) -> int:
        """Delete the app's finished deployments beyond the newest ``keep``, with their steps; never one that
        a backup or a migration record refers to. Returns how many went."""
        with self._transaction():
            doomed = [r[0] for r in self._db.execute(
                "SELECT id FROM deployments WHERE app = ? AND finished_at IS NOT NULL AND id NOT IN "
                "(SELECT id FROM deployments WHERE app = ? ORDER BY id DESC LIMIT ?) "
                "AND id NOT IN (SELECT deployment FROM backups WHERE deployment IS NOT NULL) "
                "AND id NOT IN (SELECT deployment FROM migrations)", (app, app, keep))]
            for chunk in range(0, len(doomed), 500):
                ids = doomed[chunk:chunk + 500]
                marks = ",".join("?" * len(ids))
                self._db.execute(f"DELETE FROM deployment_steps WHERE deployment IN ({marks})", ids)
                self._db.execute(f"DELETE FROM deployments WHERE id IN ({marks})", ids)
        return len(doomed)

    def steps(self, deployment: int) -> list[dict]:
        return [dict(r) for r in self._db.execute(
            "SELECT at, step, detail FROM deployment_steps WHERE deployment = ? ORDER BY rowid", (deployment,))]

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
