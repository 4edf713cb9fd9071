"""The configuration reference's tables, made from the Field declarations.

docs/configuration.md holds each table between ``<!-- reference: NAME -->`` and ``<!-- /reference -->``;
``scripts/config_reference.py`` rewrites them, and a unit test fails when they are out of date, so a
setting is declared once, in code, with its help.
"""

from __future__ import annotations

import re

from bloom_agent.config.agent import AGENT_FIELDS, API_FIELDS
from bloom_agent.config.apps import APP_FIELDS
from bloom_agent.config.checks import CHECK_FIELDS
from bloom_agent.config.database import DATABASE_FIELDS
from bloom_agent.config.schema import Field

TABLES: dict[str, tuple[list[Field], tuple[str, ...]]] = {
    "agent": (AGENT_FIELDS, ("key", "type", "default", "meaning", "applied")),
    "api": (API_FIELDS, ("key", "type", "default", "meaning")),
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


# -- bloom-agent.toml(5): the same declarations, as a manual page --------------------------------

MAN_SECTIONS = (
    ("AGENT FILE", "agent", "The table [agent] of /etc/bloom/agent.toml."),
    ("HTTPS API", "api", "The table [api] of /etc/bloom/agent.toml: the optional HTTPS API, which listens only "
                         "while bloom-agent-api.socket is enabled (read at start and on every reload)."),
    ("APP FILES", "app", "The top level of /etc/bloom/apps/APP.toml; the file name gives the app's name."),
    ("HEALTH CHECKS", "health_check", "Each [[health_check]] table of an app file."),
    ("DATABASE", "database", "The [database] table of an app file."),
)


def _roff(text: str) -> str:
    """Markdown of a help text as roff: `code` in bold, [links](target) as their words, escapes."""
    text = re.sub(r"\[([^]]+)\]\([^)]*\)", r"\1", text)
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"`([^`]*)`", r"\\fB\1\\fR", text)


def manpage(version: str, date: str) -> str:
    lines = [
        f'.TH BLOOM\\-AGENT.TOML 5 "{date}" "bloom\\-agent {version}" "File Formats"',
        ".SH NAME",
        "bloom\\-agent.toml \\- configuration of bloom\\-agent and of its apps",
        ".SH SYNOPSIS",
        ".I /etc/bloom/agent.toml",
        ".br",
        ".I /etc/bloom/apps/APP.toml",
        ".SH DESCRIPTION",
        "Both are TOML files. A key not listed here, or a value of the wrong type or out of range, is an",
        "error that names the file and the key: the agent refuses to start with a bad",
        ".IR agent.toml ,",
        "keeps its running configuration when one is reloaded, and does not load a bad app file.",
        "Check them with",
        ".BR \"bloom\\-agent \\-\\-check\\-config\" ;",
        "apply them with",
        ".BR \"bloomctl reload\" .",
        "This page is made from the same declarations as the parser.",
    ]
    for title, name, intro in MAN_SECTIONS:
        fields, _columns = TABLES[name]
        lines += [f".SH {title}", _roff(intro)]
        for field in fields:
            meta = f"{_roff(field.kind_text)}; default {_roff(field.default_text)}"
            if field.applies_to:
                meta += f"; for {_roff(field.applies_to)}"
            if name == "agent":
                meta += "; applied " + ("at restart" if field.restart else "on reload")
            lines += [".TP", f".B {field.name}", f"({meta})", _roff(field.help) + "."]
    lines += [
        ".SH FILES",
        ".TP", ".I /etc/bloom/agent.toml", "The agent's configuration (a conffile, every default commented).",
        ".TP", ".I /etc/bloom/apps/", "One file per app.",
        ".SH SEE ALSO",
        ".BR bloom\\-agent (8),",
        ".BR bloomctl (1);",
        ".I /usr/share/doc/bloom\\-agent/docs/configuration.md",
        "and",
        ".I database.md",
        "there, with examples.",
    ]
    return "\n".join(lines) + "\n"
