"""The agent's own configuration, /etc/bloom/agent.toml."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bloom_agent.config.schema import Field, check_absolute_path, check_choice, check_positive, parse_table, read_toml
from bloom_agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/bloom/agent.toml")
CONFIG_ENV = "BLOOM_CONFIG"

AGENT_FIELDS = [
    Field("state_dir", str, "/var/lib/bloom", check_absolute_path),
    Field("control_socket", str, "/run/bloom/control.sock", check_absolute_path),
    Field("control_group", str, "bloom"),
    Field("max_request_bytes", int, 1024 * 1024, check_positive),
    Field("log_level", str, "info", check_choice("debug", "info", "warning", "error")),
    Field("apps_dir", str, "/etc/bloom/apps", check_absolute_path),
    Field("releases_dir", str, "/var/lib/bloom/releases", check_absolute_path),
]


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    state_dir: Path
    control_socket: Path
    control_group: str
    max_request_bytes: int
    log_level: str
    apps_dir: Path
    releases_dir: Path
    from_file: bool


def default_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load(path: Path) -> AgentConfig:
    """Load and validate; a missing file means all defaults, anything malformed is a ConfigError."""
    from_file = path.exists()
    data = read_toml(path) if from_file else {}
    unknown = sorted(set(data) - {"agent"})
    if unknown:
        raise ConfigError(f"{path}: unknown table or key '{unknown[0]}'", hint="the agent's settings live under [agent]")
    values = parse_table(data.get("agent", {}), AGENT_FIELDS, path, prefix="agent.")
    return AgentConfig(
        path=path,
        state_dir=Path(values["state_dir"]),
        control_socket=Path(values["control_socket"]),
        control_group=values["control_group"],
        max_request_bytes=values["max_request_bytes"],
        log_level=values["log_level"],
        apps_dir=Path(values["apps_dir"]),
        releases_dir=Path(values["releases_dir"]),
        from_file=from_file,
    )
