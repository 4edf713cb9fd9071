#!/usr/bin/python3
"""A minimal migration tool for a SQLite database, as a release would ship it for bloom-agent.

    bin/migrate up      apply migrations/NNN.up.sql not applied yet, in order
    bin/migrate down    revert to the newest migration the release in $BLOOM_MIGRATE_TO_DIR ships
                        (none there, or no such directory: revert them all), with this release's
                        migrations/NNN.down.sql, newest first
    bin/migrate pending exit 0 when `up` has something to do, 1 when not

The database is $BLOOM_DATABASE_URL (a file path). Applied migrations are recorded in the table
schema_migrations; each migration runs in a transaction with its record, so it is all or nothing.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # the release directory (bin/migrate)
NAME = re.compile(r"^(\d+)\.up\.sql$")


def available(release: Path) -> list[int]:
    directory = release / "migrations"
    if not directory.is_dir():
        return []
    return sorted(int(m[1]) for p in directory.iterdir() if (m := NAME.match(p.name)))


def connect() -> sqlite3.Connection:
    db = sqlite3.connect(os.environ["BLOOM_DATABASE_URL"], isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    return db


def applied(db: sqlite3.Connection) -> list[int]:
    return [row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")]


def run(db: sqlite3.Connection, sql: str, record: str, version: int) -> None:
    db.execute("BEGIN")
    try:
        for statement in filter(str.strip, sql.split(";")):
            db.execute(statement)
        db.execute(record, (version,))
        db.execute("COMMIT")
    except sqlite3.Error:
        db.execute("ROLLBACK")
        raise


def up(db: sqlite3.Connection) -> int:
    for version in sorted(set(available(HERE)) - set(applied(db))):
        run(db, (HERE / "migrations" / f"{version:03d}.up.sql").read_text(),
            "INSERT INTO schema_migrations (version) VALUES (?)", version)
        print(f"applied {version:03d}")
    return 0


def down(db: sqlite3.Connection) -> int:
    target_dir = os.environ.get("BLOOM_MIGRATE_TO_DIR", "")
    target = max(available(Path(target_dir)), default=0) if target_dir else 0
    for version in sorted((v for v in applied(db) if v > target), reverse=True):
        run(db, (HERE / "migrations" / f"{version:03d}.down.sql").read_text(),
            "DELETE FROM schema_migrations WHERE version = ?", version)
        print(f"reverted {version:03d} (back to {os.environ.get('BLOOM_MIGRATE_TO') or 'nothing'})")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("up", "down", "pending"):
        print(__doc__, file=sys.stderr)
        return 2
    db = connect()
    try:
        if argv[1] == "pending":
            return 0 if set(available(HERE)) - set(applied(db)) else 1
        return up(db) if argv[1] == "up" else down(db)
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
