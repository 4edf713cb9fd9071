"""The agent's persistent state: one SQLite database under the state directory.

WAL with synchronous=FULL: a record the agent has written survives the agent (or the host) dying
right after. The schema is versioned with ``PRAGMA user_version`` and only ever migrated forward,
so a package upgrade keeps everything.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from .errors import BloomError

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
]


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class StateError(BloomError):
    code = "state"


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state database {path}: {exc}") from exc
        os.chmod(path, 0o640)

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
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(sql):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={version}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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

    def close(self) -> None:
        self._db.close()


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]
