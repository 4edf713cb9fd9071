"""Put a release on disk: validate the tarball, unpack it beside its final place, rename it in.

Everything is checked before anything is visible: a refused or failed install leaves no directory
and no record behind. The unpacking is done member by member by this module, not by tarfile's
extractall, so ownership, modes and link targets are exactly what we allow and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Protocol

from bloom_agent.config.apps import AppConfig
from bloom_agent.errors import InstallError
from bloom_agent.store import versions

CHUNK = 1024 * 1024
# Python's own check of archive members (3.12, and later 3.11 point releases; Debian 12's 3.11.2 has
# none): a second opinion on top of ours where the interpreter has it.
DATA_FILTER = getattr(tarfile, "data_filter", None)
# Permission bits kept from the archive: never group- or world-writable, whatever it says (the files
# are root's, and a release's code must not be changed by anyone but the agent).
MODE_BITS = 0o755
# While a tarball is received, free space is looked at again after every this many bytes.
SPACE_CHECK_BYTES = 16 * 1024 * 1024
STAGING_PREFIX = ".install-"
_MAGIC = {b"\x1f\x8b": "gz", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zst"}
SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tzst")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Installed:
    version: str
    instance: str
    path: Path
    sha256: str
    size: int
    warning: str = ""
    staging: Path | None = None  # unpacked and on disk, until place() renames it to ``path``


def version_from_name(app: str, filename: str) -> str:
    """APP-VERSION.tar.gz (and the other suffixes). A version read from a name starts with a digit, so
    that web-api-1.0.0.tar.gz is never web's release "api-1.0.0"; others need --version."""
    suffix = next((s for s in SUFFIXES if filename.endswith(s)), None)
    version = filename[len(app) + 1:-len(suffix)] if suffix and filename.startswith(f"{app}-") else ""
    if not version[:1].isdigit():
        raise versions.InvalidVersion(
            f"cannot tell the version from the file name {filename!r}",
            hint=f"name it {app}-VERSION.tar.gz with a VERSION that starts with a digit, or pass --version",
        )
    return version


def expected_checksum(name: str, given: str | None, required: bool) -> str | None:
    """The SHA-256 the caller vouches for (bloomctl sends --sha256, or the TARBALL.sha256 beside the file,
    read as the caller: the agent opens no file on anyone's behalf)."""
    value = (given or "").strip().lower()
    if not value:
        if required:
            raise InstallError(
                f"no checksum for {name}: this app requires one (require_checksum = true)",
                hint=f"pass --sha256 HEX, or put the output of 'sha256sum {name}' in {name}.sha256 beside it",
            )
        return None
    if not _HEX64.fullmatch(value):
        raise InstallError(f"checksum {value!r} is not a SHA-256 (64 hex digits)")
    return value


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# What one archive may hold besides its files' contents (max_release_bytes caps those): its long-name
# and PAX headers are read whole into memory, and a streamed TarFile keeps a record of every member.
MAX_HEADER_BYTES = 1024 * 1024
MAX_MEMBERS = 100_000
# Free space is checked again each time this much more has been unpacked.
SPACE_CHECK_BYTES = 64 * 1024 * 1024
# A decompression bomb: more than this many bytes unpacked for each byte of the archive, once past the
# floor (small releases of text compress well and are no danger). Builds give 3-20x; gzip tops out
# near 1,000x, and zstd or xz can go far beyond: this stops a small upload from filling the disk up to
# max_release_bytes.
MAX_EXPANSION = 200
EXPANSION_FLOOR_BYTES = 64 * 1024 * 1024
_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)


class _BoundedTarInfo(tarfile.TarInfo):
    """A member header that refuses an extended header (long name, PAX) too large to read into memory:
    a few hundred KB of gzip can hold a gigabyte of one."""

    def _proc_member(self, tarfile_):
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise InstallError(f"the archive has an extended header of {self.size} bytes (more than "
                               f"{MAX_HEADER_BYTES}): not a release, refused before reading it",
                               hint="a path name or PAX header this long is not something a build makes")
        return super()._proc_member(tarfile_)


def _open_stream(name: str, fh: BinaryIO) -> tarfile.TarFile:
    head = fh.read(6)
    fh.seek(0)
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        raise InstallError(f"{name} is not a gzip, xz or zstd compressed tar archive",
                           hint="build it with: tar -czf APP-VERSION.tar.gz -C BUILD_DIR .")
    if kind == "zst":
        import zstandard

        return tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(fh), mode="r|",
                            tarinfo=_BoundedTarInfo)
    return tarfile.open(fileobj=fh, mode=f"r|{kind}", tarinfo=_BoundedTarInfo)


def _safe_relpath(name: str) -> PurePosixPath:
    if "\0" in name:
        shown = name.replace("\0", "\\0")
        raise InstallError(f"archive member {shown!r} has a NUL byte in its name")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise InstallError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts:
        raise InstallError(f"archive member {name!r} contains '..'")
    parts = [p for p in path.parts if p not in (".", "")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _python_filter(member: tarfile.TarInfo, dest: Path) -> None:
    if DATA_FILTER is None:
        return
    try:
        DATA_FILTER(member, str(dest))
    except tarfile.TarError as exc:  # FilterError and its kinds are TarErrors
        raise InstallError(f"archive member {member.name!r} refused by Python's tar data filter: {exc}") from exc


def _check_link_target(member: tarfile.TarInfo, rel: PurePosixPath) -> None:
    if "\0" in member.linkname:
        raise InstallError(f"link {member.name!r} has a NUL byte in its target")
    target = PurePosixPath(member.linkname)
    if target.is_absolute():
        raise InstallError(f"link {member.name!r} points to an absolute path {member.linkname!r}")
    base = rel.parent if member.issym() else PurePosixPath(".")
    depth = 0
    for part in (base / target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise InstallError(f"link {member.name!r} points outside the release: {member.linkname!r}")


def _no_symlink_on_the_way(dest: Path, rel: PurePosixPath, name: str) -> None:
    """Refuse a member whose path goes through, or lands on, a link the archive made earlier.

    Each link target is checked on its own, so a chain of links (``a -> .`` then ``a/a/c -> ../..``)
    could otherwise lead a later member out of the release: nothing is ever written through a link.
    """
    path = dest
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise InstallError(f"archive member {name!r} is written through the link {str(path.relative_to(dest))!r}")


def _strip(name: str, strip: int) -> str | None:
    """``name`` without its first ``strip`` components (tar's --strip-components); None if nothing is left."""
    if not strip:
        return name
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    return str(PurePosixPath(*parts[strip:])) if len(parts) > strip else None


def unpack(tarball: Path, dest: Path, max_bytes: int, strip: int = 0, name: str | None = None,
           min_free: int = 0) -> int:
    """Unpack into the empty directory ``dest``; return the total size of regular files.
    ``strip`` drops that many leading path components from every member, like tar's --strip-components;
    ``min_free``: the free space the file system must keep, checked as the unpacking goes."""
    total = checked_at = 0
    name = name or tarball.name
    with open(tarball, "rb") as fh:
        packed = os.fstat(fh.fileno()).st_size
        allowed = max(EXPANSION_FLOOR_BYTES, MAX_EXPANSION * packed)
        try:
            archive = _open_stream(name, fh)
            with archive:
                for count, member in enumerate(archive, start=1):
                    if count > MAX_MEMBERS:
                        raise InstallError(f"{name} has more than {MAX_MEMBERS} members; refused",
                                           hint="a release this fragmented is not something a build makes")
                    if total - checked_at >= SPACE_CHECK_BYTES:
                        checked_at = total
                        _check_room(dest, min_free)
                    stripped = _strip(member.name, strip)
                    if stripped is None:
                        continue  # the prefix directories themselves
                    if member.islnk():
                        linkname = _strip(member.linkname, strip)
                        if linkname is None:
                            raise InstallError(f"hard link {member.name!r} points into the stripped prefix")
                        member.linkname = linkname
                    member.name = stripped
                    rel = _safe_relpath(member.name)
                    _python_filter(member, dest)
                    _no_symlink_on_the_way(dest, rel, member.name)
                    target = dest / rel
                    if member.mode & (stat.S_ISUID | stat.S_ISGID):
                        raise InstallError(f"archive member {member.name!r} has a setuid or setgid bit")
                    if member.isdir():
                        target.mkdir(mode=0o755, parents=True, exist_ok=True)
                        os.chmod(target, (member.mode & MODE_BITS) | 0o700)
                    elif member.isfile():
                        total += member.size
                        if total > max_bytes:
                            raise InstallError(
                                f"release is larger than max_release_bytes ({max_bytes} bytes) once unpacked",
                                hint="raise max_release_bytes in the app file if this size is expected",
                            )
                        if total > allowed:
                            raise InstallError(
                                f"{name} unpacks to more than {MAX_EXPANSION} times its own size ({_size(total)} "
                                f"from {_size(packed)}): a decompression bomb, not a release; refused",
                                hint="if it is a real release, pack its padding or generated data otherwise, "
                                     "or ship that data beside the release",
                            )
                        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                        source = archive.extractfile(member)
                        with open(target, "xb") as out:
                            shutil.copyfileobj(source, out, CHUNK)
                        os.chmod(target, member.mode & MODE_BITS)
                    elif member.issym():
                        _check_link_target(member, rel)
                        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                        os.symlink(member.linkname, target)
                    elif member.islnk():
                        _check_link_target(member, rel)
                        source_rel = _safe_relpath(member.linkname)
                        _no_symlink_on_the_way(dest, source_rel, member.name)
                        link_source = dest / source_rel
                        if not link_source.is_file():
                            raise InstallError(f"hard link {member.name!r} does not point to a file earlier in the archive")
                        os.link(link_source, target)
                    else:
                        raise InstallError(
                            f"archive member {member.name!r} is a device, FIFO or other special file; releases hold files, directories and links only"
                        )
        except (tarfile.TarError, EOFError, *_decompression_errors()) as exc:
            raise InstallError(f"{name} is not a readable tar archive: {exc}",
                               hint="check the upload; 'tar -tf FILE' shows what is wrong") from exc
    return total


def _check_room(dest: Path, min_free: int) -> None:
    free = shutil.disk_usage(dest).free
    if free < min_free:
        raise InstallError(f"the file system of {dest.parent} is down to {_size(free)} free while unpacking, less "
                           f"than min_free_bytes ({_size(min_free)}); nothing was installed",
                           hint="free space there, or lower min_free_bytes in the app file")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    import lzma
    import zlib

    errors: list[type[BaseException]] = [zlib.error, lzma.LZMAError, io.UnsupportedOperation]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


def _check_layout(app: AppConfig, root: Path, version: str) -> str:
    """A tarball packed with its build directory (``tar czf web-1.4.0.tar.gz web-1.4.0/``, ``git archive
    --prefix``) puts the whole release one level down: the app then starts in the wrong directory.
    Refused when it is surely that; otherwise returned as a warning."""
    entries = list(root.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        return ""
    prefix = entries[0].name
    program = app.argv[0]
    if not program.startswith("/") and PurePosixPath(program).parts[0] == prefix:
        return ""  # the app file names its program through that directory: meant so
    fix = (f"pack the release from inside that directory (tar -czf {app.name}-{version}.tar.gz -C {prefix} .; "
           f"git archive without --prefix), or install it with --strip-components 1")
    what = f"everything in the tarball is under one directory, {prefix + '/'!r}"
    if not program.startswith("/") or version in prefix:
        raise InstallError(f"{what}: the release would run from the directory above its files", hint=fix)
    return f"{what}; the app starts in the directory above it. If that is a packaging prefix: {fix}"


def _check_exec(app: AppConfig, root: Path) -> None:
    program = app.argv[0]
    if program.startswith("/"):
        return  # an absolute program lives outside the release; the app file vouches for it
    path = root / program
    resolved = path.resolve()
    if not path.exists():
        raise InstallError(f"the release has no {program!r}, the app's exec (from {app.path})",
                           hint="the tarball's paths are relative to the release root, e.g. bin/server")
    if root.resolve() not in resolved.parents:
        raise InstallError(f"the app's exec {program!r} resolves outside the release")
    if not resolved.is_file() or not os.access(resolved, os.X_OK):
        raise InstallError(f"{program!r} in the release is not an executable file", hint="chmod +x it before packing")


def _check_free_space(app: AppConfig, needed: int) -> None:
    usage = shutil.disk_usage(app.releases_dir)
    if usage.free - needed < app.min_free_bytes:
        raise InstallError(
            f"not enough free space in {app.releases_dir}: {_size(usage.free)} free, the release needs "
            f"{_size(needed)} and min_free_bytes keeps {_size(app.min_free_bytes)} free",
            hint="remove old releases (bloomctl remove APP VERSION) or free space on that file system",
        )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class Received:
    """An uploaded tarball, spooled where only the agent writes: what is hashed is what is unpacked."""

    path: Path
    sha256: str
    size: int


class Upload(Protocol):
    async def copy_to(self, write: Callable[[bytes], None], limit: int) -> int: ...


async def receive(app: AppConfig, upload: Upload, name: str) -> Received:
    """Spool the tarball sent with the request beside the app's releases, hashing it on the way and
    keeping min_free_bytes free; the caller unpacks from this copy and removes it."""
    app.releases_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    _check_free_space(app, 0)
    fd, tmp = tempfile.mkstemp(dir=app.releases_dir, prefix=f"{STAGING_PREFIX}upload-")
    path, digest = Path(tmp), hashlib.sha256()
    space_checked_at = 0

    def write(data: bytes) -> None:
        nonlocal space_checked_at
        fh.write(data)
        digest.update(data)
        if fh.tell() - space_checked_at >= SPACE_CHECK_BYTES:
            space_checked_at = fh.tell()
            _check_free_space(app, 0)

    try:
        with os.fdopen(fd, "wb") as fh:
            size = await upload.copy_to(write, app.max_release_bytes)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise InstallError(f"cannot receive {name}: {exc.strerror or exc}",
                           hint="check free space and permissions under " + str(app.releases_dir)) from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Received(path=path, sha256=digest.hexdigest(), size=size)


def install(app: AppConfig, tarball: Path, version: str, checksum: str | None, strip: int = 0,
            digest: str | None = None, name: str | None = None, check: bool = False) -> Installed:
    """Validate and unpack into a staging directory, flushed to disk; the caller records the release,
    then puts it in place with ``place``. Raises InstallError and leaves nothing. ``digest``: the
    tarball's SHA-256 when already known (computed as it was received); ``name``: how to call it in
    messages (the name the caller gave it, not the spool file's); ``check``: validate only, the
    unpacked tree is removed."""
    name = name or tarball.name
    versions.validate(version)
    instance = versions.instance(version)
    final = app.releases_dir / instance
    if final.exists():
        raise InstallError(f"{app.name} {version} is already installed at {final}",
                           hint=f"remove it first (bloomctl remove {app.name} {version}) or use a new version")
    if not tarball.is_file():
        raise InstallError(f"{tarball}: no such file")
    app.releases_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    _check_free_space(app, tarball.stat().st_size)
    digest = digest or sha256_of(tarball)
    if checksum is not None and digest != checksum:
        raise InstallError(f"checksum mismatch for {name}: expected {checksum}, got {digest}",
                           hint="the file is corrupt or not the one you meant; upload it again")
    if check:  # no lock is held for a check: a directory of its own, beside any install
        staging = Path(tempfile.mkdtemp(dir=app.releases_dir, prefix=f"{STAGING_PREFIX}check-{instance}-"))
    else:
        staging = app.releases_dir / f"{STAGING_PREFIX}{instance}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
    try:
        size = unpack(tarball, staging, app.max_release_bytes, strip, name, app.min_free_bytes)
        warning = _check_layout(app, staging, version)
        _check_exec(app, staging)
        _check_free_space(app, 0)
        if check:
            shutil.rmtree(staging)
        else:
            os.chmod(staging, 0o755)
            _flush(staging)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InstallError(f"cannot install {app.name} {version}: {exc.strerror or exc}",
                           hint="check free space and permissions under " + str(app.releases_dir)) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Installed(version=version, instance=instance, path=final, sha256=digest, size=size, warning=warning,
                     staging=None if check else staging)


def place(done: Installed) -> None:
    """Rename the unpacked release into place, durably. Called once its record is written: a release
    directory never exists without its record, whenever the agent is killed."""
    try:
        os.rename(done.staging, done.path)
        fsync_dir(done.path.parent)
    except OSError as exc:
        shutil.rmtree(done.staging, ignore_errors=True)
        raise InstallError(f"cannot put {done.version} in place at {done.path}: {exc.strerror or exc}") from exc


def discard_staged(done: Installed) -> None:
    if done.staging is not None:
        shutil.rmtree(done.staging, ignore_errors=True)


def _flush(tree: Path) -> None:
    """Everything just unpacked, on disk before it is renamed into place: syncfs(2) on its file system,
    one call whatever the number of files (os.sync where libc has no syncfs)."""
    import ctypes

    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_root_leftovers(releases_root: Path) -> list[Path]:
    """What an app removal killed half-way left beside the apps' release directories."""
    if not releases_root.is_dir():
        return []
    leftovers = [p for p in releases_root.iterdir() if p.name.startswith(f"{STAGING_PREFIX}removed-app-")]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def remove_staging_leftovers(app: AppConfig) -> list[Path]:
    """Staging directories of an install the agent did not finish (killed mid-unpack)."""
    if not app.releases_dir.is_dir():
        return []
    leftovers = [p for p in app.releases_dir.iterdir() if p.name.startswith(STAGING_PREFIX)]
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def remove_all(app: AppConfig) -> None:
    """The app's whole releases directory (an app taken off the host)."""
    _discard(app.releases_dir, app.releases_dir.with_name(f"{STAGING_PREFIX}removed-app-{app.name}-{os.getpid()}"))


def remove_release(app: AppConfig, instance: str) -> None:
    _discard(app.releases_dir / instance, app.releases_dir / f"{STAGING_PREFIX}removed-{instance}-{os.getpid()}")


def _discard(path: Path, doomed: Path) -> None:
    # Renamed first, so a half-deleted tree never looks like an installed release.
    if path.is_dir():
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
