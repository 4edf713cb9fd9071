"""An app's ``[database]`` table: the database a release migrates, how it is backed up, and how a
rollback undoes a migration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bloom_agent.config.schema import Field, check_choice, check_non_negative, check_positive, parse_table
from bloom_agent.errors import ConfigError

BACKENDS = ("postgresql", "sqlite")
STRATEGIES = ("down_first", "backup_only", "skip")


def _check_command(value: str) -> str | None:
    if any(ord(c) < 32 and c not in "\t" for c in value):
        return "must be one line (no control characters)"
    return None if value.strip() or not value else "must not be blank"


_check_command.describe = "command string"


def _check_optional_path(value: str) -> str | None:
    return None if not value or value.startswith("/") else f"must be an absolute path, got {value!r}"


_check_optional_path.describe = "absolute path"

DATABASE_FIELDS = [
    Field("backend", str, None, check_choice(*BACKENDS), required=True,
          help="`postgresql` (`pg_dump`/`pg_restore`) or `sqlite` (SQLite's online backup API)"),
    Field("url", str, None, required=True, kind="string",
          help="PostgreSQL: a libpq URI without a password, e.g. `postgresql:///shop`; SQLite: the database "
               "file's absolute path"),
    Field("passfile", str, "", _check_optional_path,
          help="PostgreSQL: a libpq password file readable by the app's user (`PGPASSFILE`); empty: peer or "
               "other password-less authentication"),
    Field("migrate", str, "", _check_command,
          help="applies the new release's migrations: run in the new release's directory as the app's user"),
    Field("migrate_down", str, "", _check_command,
          help="reverts the migrations of the release it runs in, down to the release named by "
               "`BLOOM_MIGRATE_TO` (see [database safety](database.md))"),
    Field("pending", str, "", _check_command,
          help="exits 0 when the new release has migrations to apply, 1 when not; empty: every switch "
               "backs up and migrates"),
    Field("migrate_timeout_sec", float, 300.0, check_positive, help="time `migrate` or `migrate_down` may take"),
    Field("rollback_strategy", str, "backup_only", check_choice(*STRATEGIES),
          help="`down_first`: `migrate_down`, the backup if that fails; `backup_only`: restore the backup; "
               "`skip`: leave the database alone (dangerous)"),
    Field("backup_dir", str, "", _check_optional_path, shown_default="`STATE_DIR/backups/APP`",
          help="where backups are kept (0700, root's)"),
    Field("keep_backups", int, 5, check_positive, help="backups kept for the app"),
    Field("backup_timeout_sec", float, 600.0, check_positive, help="time a backup or a restore may take"),
    Field("backup_required", bool, True,
          help="no backup, no migration: a failed backup refuses the switch; `false`: migrate without one"),
    Field("min_free_bytes", int, 100 * 1024 * 1024, check_non_negative, shown_default="`104857600` (100 MiB)",
          help="free space a backup must leave on the backup directory's file system"),
]


@dataclass(frozen=True)
class DatabaseConfig:
    backend: str
    url: str
    passfile: str
    migrate: str
    migrate_down: str
    pending: str
    migrate_timeout_sec: float
    rollback_strategy: str
    backup_dir: str
    keep_backups: int
    backup_timeout_sec: float
    backup_required: bool
    min_free_bytes: int

    def backups_in(self, state_dir: Path, app: str) -> Path:
        return Path(self.backup_dir) if self.backup_dir else state_dir / "backups" / app


def parse_database(table: Any, path: Path, user: str) -> DatabaseConfig:
    values = parse_table(table, DATABASE_FIELDS, path, prefix="database.")
    for field in DATABASE_FIELDS:
        if field.required and values[field.name] is None:
            raise ConfigError(f"{path}: missing required key 'database.{field.name}'",
                              hint='e.g. backend = "postgresql" and url = "postgresql:///APP"')
    db = DatabaseConfig(**values)
    where = f"{path}: key 'database.url'"
    if db.backend == "sqlite" and not db.url.startswith("/"):
        raise ConfigError(f"{where}: a SQLite database is named by its absolute path, got {db.url!r}")
    if db.backend == "postgresql":
        parts = urlsplit(db.url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{where}: expected a libpq URI (postgresql://...), got {db.url!r}")
        if parts.password is not None:
            raise ConfigError(f"{where}: contains a password; the app file is no place for one",
                              hint="put it in a libpq password file and name that file in database.passfile")
    if db.rollback_strategy == "down_first" and not db.migrate_down:
        raise ConfigError(f"{path}: rollback_strategy \"down_first\" runs database.migrate_down, which is not set",
                          hint='set migrate_down, or use rollback_strategy = "backup_only"')
    if db.migrate_down and not db.migrate:
        raise ConfigError(f"{path}: database.migrate_down is set but database.migrate is not")
    if (db.migrate or db.migrate_down) and not user:
        raise ConfigError(f"{path}: database migrations run as the app's user, and 'user' is not set",
                          hint="set user = \"NAME\" (an existing system user that can reach the database)")
    return db
