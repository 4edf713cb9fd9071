#!/usr/bin/python3
"""Rewrite the configuration reference's tables in docs/configuration.md from the Field declarations.

Usage: scripts/config_reference.py [--check]   (--check: exit 1 if the file is out of date, change nothing)
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "agent"))

from bloom_agent.config.reference import update  # noqa: E402

DOC = REPO / "docs" / "configuration.md"


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    made = update(text)
    if made == text:
        return 0
    if "--check" in argv:
        print(f"{DOC} is out of date: run scripts/config_reference.py", file=sys.stderr)
        return 1
    DOC.write_text(made)
    print(f"rewrote the tables in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
