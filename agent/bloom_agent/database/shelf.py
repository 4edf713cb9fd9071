"""Backup files on disk: one directory an app, root's and 0700, written as ``NAME.partial`` and
renamed when whole, so a backup the agent was killed in the middle of is never mistaken for one."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from bloom_agent.errors import DatabaseError
from bloom_agent.store.releases import fsync_dir

PARTIAL = ".partial"
READ_BYTES = 1024 * 1024


class BackupShelf:
    def __init__(self, directory: Path, min_free_bytes: int) -> None:
        self.directory = directory
        self.min_free_bytes = min_free_bytes

    def prepare(self) -> None:
        """The directory, made private, and no partial backup left from an agent that was killed."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            for leftover in self.directory.glob("*" + PARTIAL):
                leftover.unlink()
        except OSError as exc:
            raise DatabaseError(f"cannot use backup directory {self.directory}: {exc.strerror}",
                                hint="check database.backup_dir and the file system it is on") from exc
        self.check_space()

    def check_space(self) -> None:
        free = shutil.disk_usage(self.directory).free
        if free < self.min_free_bytes:
            raise DatabaseError(
                f"backup directory {self.directory} has {free:,} bytes free, less than database.min_free_bytes "
                f"({self.min_free_bytes:,}); no backup was taken and nothing changed",
                hint="free space there (bloomctl backup list shows old backups), or set database.backup_dir elsewhere")

    def partial(self, app: str, label: str, suffix: str) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        return self.directory / f"{app}-{stamp}-{label}{suffix}{PARTIAL}"

    def seal(self, partial: Path) -> tuple[Path, int, str]:
        """Make a finished backup durable and give it its name; returns (path, size, sha256)."""
        digest = hashlib.sha256()
        with open(partial, "rb") as fh:
            while chunk := fh.read(READ_BYTES):
                digest.update(chunk)
            os.fsync(fh.fileno())
        final = partial.with_name(partial.name.removesuffix(PARTIAL))
        os.replace(partial, final)
        fsync_dir(self.directory)
        return final, final.stat().st_size, digest.hexdigest()

    def discard(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def verify(path: Path, sha256: str) -> None:
        """A backup about to be restored is the one that was written."""
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(READ_BYTES):
                    digest.update(chunk)
        except OSError as exc:
            raise DatabaseError(f"cannot read backup {path}: {exc.strerror}") from exc
        if digest.hexdigest() != sha256:
            raise DatabaseError(f"backup {path} does not match its recorded SHA-256; it was not restored",
                                hint="the file changed on disk: restore an older backup (bloomctl backup list)")
