"""Health checks as declared: the [[health_check]] tables of an app file, parsed and checked.

Running them is the monitors' business (``bloom_agent.watch.checks``); this is data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bloom_agent.config.schema import Field, check_choice, check_positive, parse_table
from bloom_agent.errors import ConfigError

# Beyond failures x (interval + timeout): the attempts' own overhead, when telling how long a check
# needs to trip.
TRIP_SLACK_SEC = 1.0
KINDS = ("http", "tcp", "command", "memory", "tasks", "python")


def _check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


CHECK_FIELDS = [
    Field("type", str, None, check_choice(*KINDS), required=True, kind="string",
          help="`http`, `tcp`, `command`, `memory`, `tasks` or `python`"),
    Field("name", str, "", shown_default="`TYPE#N`", help="shown in messages; N counts the app's checks from 0"),
    Field("interval_sec", float, 5.0, check_positive, help="time between two runs"),
    Field("timeout_sec", float, 2.0, check_positive, help="one run taking longer fails"),
    Field("failures", int, 3, check_positive, help="consecutive failures that roll back during probation"),
    Field("url", str, "", shown_default="see below", applies_to="http", help="`http://` URL to `GET`"),
    Field("expect_status", int, 200, applies_to="http", help="the status that passes"),
    Field("body_match", str, "", _check_regex, applies_to="http", kind="regular expression",
          help="must be found in the response body"),
    Field("max_response_time_ms", float, 0.0, applies_to="http", help="slower fails; 0: no limit"),
    Field("address", str, "", shown_default="first `listen` entry", applies_to="tcp",
          help="`HOST:PORT`, `[IPV6]:PORT` or a Unix socket path to connect to"),
    Field("command", str, "", shown_default="required", applies_to="command", help="shell command; exit 0 passes"),
    Field("memory_threshold_bytes", int, 0, shown_default="required", applies_to="memory",
          help="the unit's memory (cgroup `MemoryCurrent`) above this fails"),
    Field("max_tasks", int, 0, shown_default="required", applies_to="tasks",
          help="the unit's task count above this fails"),
    Field("entry_point", str, "", shown_default="required", applies_to="python",
          help="name of an entry point in the group `bloom_agent.health_checks`"),
]


@dataclass(frozen=True)
class CheckSpec:
    type: str
    name: str
    interval_sec: float
    timeout_sec: float
    failures: int
    url: str
    expect_status: int
    body_match: str
    max_response_time_ms: float
    address: str
    command: str
    memory_threshold_bytes: int
    max_tasks: int
    entry_point: str

    @property
    def time_to_trip(self) -> float:
        """From its first failure, the check trips within ``failures`` attempts, each up to its timeout
        and its interval apart, plus a little for the attempts' own overhead."""
        return self.failures * (self.interval_sec + self.timeout_sec) + TRIP_SLACK_SEC


_NEEDS = {"command": "command", "memory": "memory_threshold_bytes", "tasks": "max_tasks", "python": "entry_point"}


def parse_checks(value: Any, path: Path, listen: tuple[str, ...]) -> tuple[CheckSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: key 'health_check': must be an array of tables ([[health_check]])")
    specs = []
    for i, table in enumerate(value):
        values = parse_table(table, CHECK_FIELDS, path, prefix=f"health_check[{i}].")
        kind = values["type"]
        if kind is None:
            raise ConfigError(f"{path}: health_check[{i}]: missing required key 'type' (one of {', '.join(KINDS)})")
        needed = _NEEDS.get(kind)
        if needed and not values[needed]:
            raise ConfigError(f"{path}: health_check[{i}] of type {kind} needs '{needed}'")
        first_tcp = next((a for a in listen if not a.startswith("/")), "")
        if kind == "http" and not values["url"]:
            if not first_tcp:
                raise ConfigError(f"{path}: health_check[{i}]: the app listens on no TCP address; give 'url'")
            values["url"] = f"http://{first_tcp.replace('0.0.0.0', '127.0.0.1').replace('[::]', '[::1]')}/health"
        if kind == "http" and urlsplit(values["url"]).scheme != "http":
            raise ConfigError(f"{path}: health_check[{i}]: url must start with http://")
        if kind == "tcp" and not values["address"]:
            values["address"] = next((a for a in listen), "")
        values["name"] = values["name"] or f"{kind}#{i}"
        specs.append(CheckSpec(**values))
    return tuple(specs)
