"""The configuration reference's tables, made from the Field declarations.

docs/configuration.md holds each table between ``<!-- reference: NAME -->`` and ``<!-- /reference -->``;
``scripts/config_reference.py`` rewrites them, and a unit test fails when they are out of date, so a
setting is declared once, in code, with its help.
"""

from __future__ import annotations

import re

from bloom_agent.config.agent import AGENT_FIELDS
from bloom_agent.config.apps import APP_FIELDS
from bloom_agent.config.checks import CHECK_FIELDS
from bloom_agent.config.database import DATABASE_FIELDS
from bloom_agent.config.schema import Field

TABLES: dict[str, tuple[list[Field], tuple[str, ...]]] = {
    "agent": (AGENT_FIELDS, ("key", "type", "default", "meaning", "applied")),
    "app": (APP_FIELDS, ("key", "type", "default", "meaning")),
    "health_check": (CHECK_FIELDS, ("key", "type", "default", "for", "meaning")),
    "database": (DATABASE_FIELDS, ("key", "type", "default", "meaning")),
}
_BLOCK = re.compile(r"(<!-- reference: (\w+) -->\n).*?(<!-- /reference -->)", re.S)


def _cell(field: Field, column: str) -> str:
    return {
        "key": f"`{field.name}`",
        "type": field.kind_text,
        "default": field.default_text,
        "meaning": field.help,
        "applied": "at restart" if field.restart else "on reload",
        "for": field.applies_to or "all",
    }[column]


def table(name: str) -> str:
    fields, columns = TABLES[name]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(f, c) for c in columns) + " |" for f in fields]
    return "\n".join(lines) + "\n"


def update(text: str) -> str:
    """``text`` with every reference table made anew."""
    return _BLOCK.sub(lambda m: m[1] + table(m[2]) + m[3], text)
