"""Release versions. They become systemd unit instance names, so the syntax is strict."""

from __future__ import annotations

import re

from bloom_agent.errors import InvalidVersion

# X.Y.Z, optional -pre and +build (semver's shape, ASCII only).
_VERSION = re.compile(
    r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
    r"(?:-([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?"
    r"(?:\+([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?",
    re.ASCII,  # \d would otherwise accept any Unicode digit
)
MAX_LENGTH = 64



def validate(version: str) -> str:
    if len(version) > MAX_LENGTH or not _VERSION.fullmatch(version):
        raise InvalidVersion(
            f"invalid version {version!r}: expected X.Y.Z with optional -pre and +build, e.g. 1.4.2, 2.0.0-rc.1, 1.4.2+build.7",
            hint="pass --version, or name the tarball APP-VERSION.tar.gz",
        )
    return version


def instance(version: str) -> str:
    """The unit instance name: '+' is not allowed in unit names, '_' never appears in a version."""
    return version.replace("+", "_")


def from_instance(name: str) -> str:
    return name.replace("_", "+")


def sort_key(version: str) -> tuple:
    """Semver precedence: a pre-release sorts before its release; build metadata is ignored."""
    m = _VERSION.fullmatch(version)
    if not m:
        return ((-1,), ())
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return ((major, minor, patch), (1,))
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return ((major, minor, patch), (0, parts))
