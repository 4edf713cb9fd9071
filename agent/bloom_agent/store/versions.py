"""Release versions. They become systemd unit instance names and directory names, so the syntax is
strict about characters, and open about shape: semantic versions, git commit ids, timestamps."""

from __future__ import annotations

import re

from bloom_agent.errors import InvalidVersion

# Letters, digits, '.', '-' and '+' ('+' becomes '_' in unit names, so '_' itself is not allowed),
# starting with a letter or digit.
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,63}", re.ASCII)
# X.Y.Z, optional -pre and +build: semantic versions, which sort_key orders.
_SEMVER = re.compile(
    r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
    r"(?:-([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?"
    r"(?:\+([0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*))?",
    re.ASCII,  # \d would otherwise accept any Unicode digit
)
MAX_LENGTH = 64


def validate(version: str) -> str:
    if len(version) > MAX_LENGTH or not _VERSION.fullmatch(version):
        raise InvalidVersion(
            f"invalid version {version!r}: use letters, digits, '.', '-' and '+', starting with a letter or digit, "
            f"at most {MAX_LENGTH} characters (1.4.2, 2.0.0-rc.1, 20261201-1530, 3f2a9c1)",
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
    m = _SEMVER.fullmatch(version)
    if not m:
        return ((-1,), ())
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return ((major, minor, patch), (1,))
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return ((major, minor, patch), (0, parts))
