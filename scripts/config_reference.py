#!/usr/bin/python3
"""Rewrite the configuration reference's tables in docs/configuration.md, and the manual page
bloom-agent.toml(5), from the Field declarations.

Usage: scripts/config_reference.py [--check]   (--check: exit 1 if a file is out of date, change nothing)
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from bloom_agent import __version__  # noqa: E402
from bloom_agent.config.reference import manpage, update  # noqa: E402

DOC = REPO / "docs" / "configuration.md"
# packaging/debian/ in the repository; debian/ in the package's build tree, where the unit tests run too.
DEBIAN = next((d for d in (REPO / "packaging" / "debian", REPO / "debian") if d.is_dir()), REPO / "packaging" / "debian")
MAN = DEBIAN / "bloom-agent.toml.5"
MAN_DATE = "December 2026"  # the month of the last change to the page's text


def main(argv: list[str]) -> int:
    stale = 0
    for path, make in ((DOC, update), (MAN, lambda _: manpage(__version__, MAN_DATE))):
        text = path.read_text() if path.exists() else ""
        made = make(text)
        if made == text:
            continue
        if "--check" in argv:
            print(f"{path} is out of date: run scripts/config_reference.py", file=sys.stderr)
            stale = 1
            continue
        path.write_text(made)
        print(f"rewrote {path}")
    return stale


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
