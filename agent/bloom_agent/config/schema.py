"""Strict validation of TOML tables against a declared set of fields.

One error names the file, the dotted key and what is wrong with it; unknown keys are errors,
because a misspelt key silently ignored is how a production setting goes missing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bloom_agent.errors import ConfigError

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}


_KIND_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}

Check = Callable[[Any], "str | None"]  # returns a problem description, or None


@dataclass(frozen=True)
class Field:
    """One setting, declared once: the parser reads it and the configuration reference is made from it
    (``bloom_agent.config.reference``)."""

    name: str
    type: type
    default: Any
    check: Check | None = None
    required: bool = False
    help: str = ""           # the reference's "meaning"
    kind: str = ""           # the reference's "type", when the type and the check say too little
    shown_default: str = ""  # the reference's "default", when the value says too little
    restart: bool = False    # bound into resources opened at start: a reload does not apply it
    applies_to: str = ""     # for health-check keys: the check types that read it

    @property
    def kind_text(self) -> str:
        if self.kind:
            return self.kind
        base = _KIND_NAMES.get(self.type, self.type.__name__)
        said = getattr(self.check, "describe", "")
        if not said:
            return base
        return f"{base} {said}" if said[0] in "<>≥≤" else said

    @property
    def default_text(self) -> str:
        if self.shown_default:
            return self.shown_default
        if self.required:
            return "required"
        return f"`{_literal(self.default)}`"

    def parse(self, value: Any, where: str) -> Any:
        # TOML integers are acceptable where a number is expected; bool is an int subclass and is not.
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(
                f"{where}: must be {_TYPE_NAMES.get(self.type, self.type.__name__)}, "
                f"got {_describe(value)}"
            )
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(f"{where}: {problem}")
        return value


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, dict)) and not value:
        return "[]" if isinstance(value, list) else "{}"
    return str(value)


def _describe(value: Any) -> str:
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return f"{name.split(' ', 1)[1]} {value!r}"
    return repr(value)


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="fix the syntax and try again") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def parse_table(table: Any, fields: list[Field], path: Path, prefix: str = "") -> dict[str, Any]:
    """Return {name: value} for every field, defaults filled in; raise ConfigError on any problem."""
    where_table = f"{path}: [{prefix.rstrip('.')}]" if prefix else f"{path}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where_table}: must be a table, got {_describe(table)}")
    known = {f.name: f for f in fields}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{path}: unknown key '{prefix}{key}'",
                hint="known keys: " + ", ".join(sorted(known)),
            )
    return {
        f.name: f.parse(table[f.name], f"{path}: key '{prefix}{f.name}'") if f.name in table else f.default
        for f in fields
    }


# Each check says what it accepts (``describe``), for the reference's "type" column.

def check_positive(value: int | float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


check_positive.describe = "> 0"


def check_non_negative(value: int | float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


check_non_negative.describe = "≥ 0"


def check_absolute_path(value: str) -> str | None:
    return None if value.startswith("/") else f"must be an absolute path, got {value!r}"


check_absolute_path.describe = "absolute path"


def check_choice(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"

    check.describe = ", ".join(f"`{c}`" for c in choices)
    return check


def check_range(low: int | float, high: int | float) -> Check:
    def check(value: int | float) -> str | None:
        return None if low <= value <= high else f"must be from {low} to {high}, got {value}"

    check.describe = f"≥ {low}, ≤ {high}"
    return check
