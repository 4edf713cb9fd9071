"""Backing up and restoring one database, and a digest of its schema to check a restore against.

PostgreSQL goes through its own tools, run as the app's user so that the connection is the app's
(peer authentication, the app's grants): ``pg_dump --format=custom`` into a file the agent holds open;
a restore is one psql transaction (what the user owns dropped, then ``pg_restore --clean``'s script),
so a restore that fails changes nothing. SQLite uses its online backup API, in a thread: a page-by-page copy that is safe
while another connection writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Protocol

from bloom_agent.config.database import DatabaseConfig
from bloom_agent.errors import DatabaseError
from bloom_agent.watch.command import RunAs, run_program

PG_DUMP, PG_RESTORE, PSQL = "/usr/bin/pg_dump", "/usr/bin/pg_restore", "/usr/bin/psql"

# The start of a restore: every table, view, sequence, routine and type that the app's user owns
# (outside extensions) goes, so that what the backup recreates meets nothing added since it was taken.
DROP_OWNED_OBJECTS = r"""
DO $bloom$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT n.nspname, c.relname, CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
               WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND pg_has_role(c.relowner, 'MEMBER')
          AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
    LOOP
        EXECUTE format('DROP %s IF EXISTS %I.%I CASCADE', r.kind, r.nspname, r.relname);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure::text AS routine
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE pg_has_role(p.proowner, 'MEMBER') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.deptype = 'e')
    LOOP
        EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', r.routine);
    END LOOP;
    FOR r IN
        SELECT n.nspname, t.typname, CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END AS kind
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
          AND pg_has_role(t.typowner, 'MEMBER') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                          AND d.deptype = 'e')
    LOOP
        EXECUTE format('DROP %s IF EXISTS %I.%I CASCADE', r.kind, r.nspname, r.typname);
    END LOOP;
END
$bloom$;
"""


class Backend(Protocol):
    suffix: str

    async def dump(self, dest: Path, timeout: float) -> None: ...

    async def restore(self, source: Path, timeout: float) -> None: ...

    async def schema_digest(self, timeout: float) -> str: ...


class PostgresBackend:
    suffix = ".pgdump"

    def __init__(self, db: DatabaseConfig, run_as: RunAs) -> None:
        self.db = db
        self.run_as = run_as

    @property
    def env(self) -> dict[str, str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "10",
               "PGAPPNAME": "bloom-agent"}
        if self.db.passfile:
            env["PGPASSFILE"] = self.db.passfile
        return env

    async def _run(self, argv: list[str], what: str, timeout: float, **files) -> None:
        ran = await run_program(argv, env=self.env, timeout=timeout, run_as=self.run_as, **files)
        if ran.returncode is None:
            raise DatabaseError(f"{what} did not finish within {timeout:g} s (backup_timeout_sec)")
        if ran.returncode:
            raise DatabaseError(f"{what} exited with status {ran.returncode}: {last_lines(ran.output)}")

    async def dump(self, dest: Path, timeout: float) -> None:
        with open(dest, "wb") as out:
            await self._run([PG_DUMP, "--format=custom", "--dbname", self.db.url], "pg_dump", timeout, stdout=out)

    async def restore(self, source: Path, timeout: float) -> None:
        """One transaction, run by psql as the app's user: drop what the user owns (pg_restore --clean
        drops only what the archive holds, and a table added since, with a foreign key into one of
        those, would stop it), then the archive's script. The script is made by the agent from the
        backup file, so the app's user never reads the backup directory."""
        with tempfile.TemporaryFile(dir=source.parent) as script:
            script.write(DROP_OWNED_OBJECTS.encode())
            script.flush()
            made = await run_program([PG_RESTORE, "--clean", "--if-exists", "--no-owner", "--file", "-", str(source)],
                                     stdout=script, timeout=timeout, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
            if made.returncode != 0:
                raise DatabaseError(f"pg_restore cannot read backup {source}: {last_lines(made.output)}")
            script.seek(0)
            await self._run([PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "--dbname",
                             self.db.url], "the restore (psql)", timeout, stdin=script)

    async def schema_digest(self, timeout: float) -> str:
        with tempfile.TemporaryFile() as out:
            await self._run([PG_DUMP, "--schema-only", "--no-owner", "--dbname", self.db.url],
                            "pg_dump --schema-only", timeout, stdout=out)
            out.seek(0)
            return _digest(out.read().decode(errors="replace").splitlines())


def _digest(lines: list[str]) -> str:
    """The schema's statements, without what changes from one dump to the next: comments (they carry
    versions) and the per-dump \\restrict key of newer pg_dump releases."""
    kept = [line for line in lines if line.strip() and not line.startswith(("--", "\\restrict", "\\unrestrict"))]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


class SqliteBackend:
    suffix = ".sqlite3"

    def __init__(self, db: DatabaseConfig) -> None:
        self.path = Path(db.url)

    async def dump(self, dest: Path, timeout: float) -> None:
        await asyncio.to_thread(self._copy, _read_only(self.path), str(dest), "backup")

    async def restore(self, source: Path, timeout: float) -> None:
        await asyncio.to_thread(self._copy, _read_only(source), str(self.path), "restore")

    @staticmethod
    def _copy(source: str, dest: str, what: str) -> None:
        # Run as root, SQLite gives a journal it creates the database file's owner, so the app can
        # still open its database afterwards.
        try:
            src = sqlite3.connect(source, uri=True)
            try:
                dst = sqlite3.connect(dest)
                try:
                    dst.execute("PRAGMA busy_timeout = 10000")
                    src.backup(dst)
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as exc:
            raise DatabaseError(f"SQLite {what} failed: {exc}") from exc

    async def schema_digest(self, timeout: float) -> str:
        return await asyncio.to_thread(self._schema)

    def _schema(self) -> str:
        if not self.path.is_file():
            raise DatabaseError(f"SQLite database {self.path} does not exist", hint="check database.url")
        try:
            conn = sqlite3.connect(_read_only(self.path), uri=True)
            try:
                rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot read the schema of {self.path}: {exc}") from exc
        return _digest([repr(row) for row in rows])


def _read_only(path: Path) -> str:
    """A read-only SQLite URI for ``path``, percent-encoded: a '?' or '#' in a file name stays a name."""
    return path.as_uri() + "?mode=ro"


def backend_for(db: DatabaseConfig, run_as: RunAs) -> Backend:
    return PostgresBackend(db, run_as) if db.backend == "postgresql" else SqliteBackend(db)


def last_lines(output: str, count: int = 5) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "no output"
