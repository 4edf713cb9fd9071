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
    Field("state_dir", str, "/var/lib/bloom", check_absolute_path, restart=True,
          help="where `state.db` lives"),
    Field("control_socket", str, "/run/bloom/control.sock", check_absolute_path, restart=True,
          help="socket bound when the agent runs outside systemd (under systemd, `bloom-agent.socket` decides)"),
    Field("control_group", str, "bloom",
          help="group whose members may use `bloomctl`; root always may"),
    Field("max_request_bytes", int, 1024 * 1024, check_positive, restart=True,
          help="largest control request accepted"),
    Field("log_level", str, "info", check_choice("debug", "info", "warning", "error"),
          help="agent log verbosity"),
    Field("apps_dir", str, "/etc/bloom/apps", check_absolute_path, restart=True,
          help="where the app files are read from"),
    Field("releases_dir", str, "/var/lib/bloom/releases", check_absolute_path, restart=True,
          help="root of the apps' release directories (`RELEASES_DIR/APP/VERSION`) unless an app sets its own"),
    Field("metrics_dir", str, "/var/lib/prometheus/node-exporter", check_absolute_path, restart=True,
          help="where the agent writes `bloom.prom` for node_exporter's textfile collector; nothing is written "
               "while the directory does not exist"),
    Field("history_keep", int, 1000, check_positive,
          help="deployments kept in each app's history (with their steps); older ones are deleted after each "
               "switch, except those a database backup or migration still refers to"),
]
# Settings bound into open resources (the database, the listening socket and its stream limit, the
# directories): a reload keeps the running value and says so.
RESTART_ONLY = tuple(f.name for f in AGENT_FIELDS if f.restart)


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    from_file: bool
    # one attribute per AGENT_FIELDS entry (tests/unit/test_config.py checks they match)
    state_dir: Path
    control_socket: Path
    control_group: str
    max_request_bytes: int
    log_level: str
    apps_dir: Path
    releases_dir: Path
    metrics_dir: Path
    history_keep: int


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
    paths = {f.name for f in AGENT_FIELDS if f.check is check_absolute_path}
    return AgentConfig(path=path, from_file=from_file,
                       **{name: Path(value) if name in paths else value for name, value in values.items()})
