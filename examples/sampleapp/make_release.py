#!/usr/bin/python3
"""Build a sampleapp release tarball for bloom-agent, with an optional faults.json.

    make_release.py --version 1.2.3 [--faults '{"crash_after_sec": 3}'] --out DIR

writes DIR/sampleapp-1.2.3.tar.gz (bin/sampleapp 0755, VERSION, faults.json; owned by
root:root, relative paths) and DIR/sampleapp-1.2.3.tar.gz.sha256 in sha256sum format.
The same inputs give the same bytes (fixed mtimes; SOURCE_DATE_EPOCH overrides them).
Importable: make_release(version, out_dir, faults=None) -> Path of the tarball.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_SOURCE = HERE / "sampleapp.py"
MIGRATE_SOURCE = HERE / "migrate.py"
NAME = "sampleapp"
DEFAULT_MTIME = 1704067200          # 2024-01-01T00:00:00Z, for reproducible archives
# A version ends up in a unit name (sampleapp@VERSION.service) and a file name.
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")


class ReleaseError(Exception):
    """A release cannot be built; the message says why."""


def _app_module():
    spec = importlib.util.spec_from_file_location("_sampleapp_for_release", APP_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_faults(faults: dict) -> None:
    """Raise ReleaseError when the app would refuse these faults (exit code 2)."""
    app = _app_module()
    try:
        app.validate_faults(faults)
    except app.BootError as exc:
        raise ReleaseError(str(exc)) from exc


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = mtime
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_release(version: str, out_dir, faults: dict | None = None, *,
                 validate: bool = True, files: dict[str, bytes] | None = None,
                 migrations: dict[int, tuple[str, str]] | None = None) -> Path:
    """Write sampleapp-VERSION.tar.gz and its .sha256 into out_dir; return the tarball's path.

    faults=None (or {}) builds a healthy release without faults.json.  validate=False lets
    a test build a release whose faults.json the app rejects at start (exit code 2). ``files``
    adds more files (relative path -> contents, 0644). ``migrations`` ({number: (up SQL, down SQL)})
    adds bin/migrate (migrate.py, a SQLite migration tool) and migrations/NNN.up.sql, NNN.down.sql.
    """
    if not VERSION_RE.match(version):
        raise ReleaseError(f"bad version {version!r}: use letters, digits, '.', '_' and '-'")
    if faults is not None and not isinstance(faults, dict):
        raise ReleaseError("faults must be a JSON object")
    if faults and validate:
        check_faults(faults)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_MTIME))

    payload = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=payload, mtime=mtime) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "bin", None, 0o755, mtime)
            _add(tar, "bin/sampleapp", APP_SOURCE.read_bytes(), 0o755, mtime)
            _add(tar, "VERSION", f"{version}\n".encode(), 0o644, mtime)
            if faults:
                text = json.dumps(faults, indent=2, sort_keys=True) + "\n"
                _add(tar, "faults.json", text.encode(), 0o644, mtime)
            files = dict(files or {})
            if migrations:
                _add(tar, "bin/migrate", MIGRATE_SOURCE.read_bytes(), 0o755, mtime)
                for number, (up_sql, down_sql) in migrations.items():
                    files[f"migrations/{number:03d}.up.sql"] = up_sql.encode()
                    files[f"migrations/{number:03d}.down.sql"] = down_sql.encode()
            dirs = sorted({str(Path(name).parent) for name in files} - {".", "bin"})
            for directory in dirs:
                _add(tar, directory, None, 0o755, mtime)
            for name, data in sorted(files.items()):
                _add(tar, name, data, 0o644, mtime)
    data = payload.getvalue()

    tarball = out_dir / f"{NAME}-{version}.tar.gz"
    checksum = tarball.with_name(tarball.name + ".sha256")
    _write_atomically(tarball, data)
    _write_atomically(checksum, f"{hashlib.sha256(data).hexdigest()}  {tarball.name}\n".encode())
    return tarball


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Build a sampleapp release for bloom-agent.")
    parser.add_argument("--version", required=True, help="release version, e.g. 1.2.3")
    parser.add_argument("--faults", default=None, metavar="JSON",
                        help='faults.json content, e.g. \'{"crash_after_sec": 3}\'')
    parser.add_argument("--no-validate-faults", action="store_true",
                        help="write faults.json even if the app would reject it (exit code 2)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    args = parser.parse_args(argv)
    try:
        faults = json.loads(args.faults) if args.faults else None
    except ValueError as exc:
        print(f"make_release: --faults is not valid JSON: {exc}", file=sys.stderr)
        return 2
    try:
        tarball = make_release(args.version, args.out, faults,
                               validate=not args.no_validate_faults)
    except (ReleaseError, OSError) as exc:
        print(f"make_release: {exc}", file=sys.stderr)
        return 2
    print(tarball)
    return 0


if __name__ == "__main__":
    sys.exit(main())
