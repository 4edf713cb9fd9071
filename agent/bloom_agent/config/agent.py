"""The agent's own configuration, /etc/bloom/agent.toml."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from bloom_agent.config.schema import (Field, check_absolute_path, check_choice, check_positive, check_range,
                                       parse_table, read_toml)
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




def check_addresses(value: list) -> str | None:
    """Addresses and CIDR ranges; a range with host bits set is refused, as it is most likely a typo."""
    for entry in value:
        if not isinstance(entry, str):
            return f"must list addresses as strings, got {entry!r}"
        try:
            ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                return f"{entry!r} is not an IP address or CIDR range ({exc})"
            return f"{entry!r} has host bits set; the range is {network}"
    return None


check_addresses.describe = "list of addresses and CIDR ranges"


def check_credential_name(value: str) -> str | None:
    if value and (not value.isprintable() or "/" in value or value in (".", "..") or len(value) > 255):
        return f"not a credential name: {value!r} (a file name in $CREDENTIALS_DIRECTORY)"
    return None


check_credential_name.describe = "string (a credential name)"

# The optional HTTPS API (docs/api.md). It listens only when bloom-agent-api.socket hands the agent its
# socket; these settings are read then, and again on every reload (a new secret or certificate applies
# to the next request).
API_FIELDS = [
    Field("certificate", str, "/etc/bloom/api.crt", check_absolute_path,
          help="PEM certificate (with its chain) the API presents"),
    Field("key", str, "/etc/bloom/api.key", check_absolute_path,
          help="the certificate's PEM private key; a file only root may read"),
    Field("secret_file", str, "/etc/bloom/api.secret", check_absolute_path,
          help="the shared secret requests are signed with (at least 32 printable characters, e.g. "
               "`openssl rand -hex 32`); a file owned by root that only root may read"),
    Field("secret_credential", str, "", check_credential_name,
          help="name of a systemd credential of `bloom-agent.service` holding the secret (`LoadCredential=`); "
               "when set, `secret_file` is not read"),
    Field("allowed_ips", list, ["127.0.0.1", "::1"], check_addresses, shown_default='`["127.0.0.1", "::1"]`',
          help="addresses and CIDR ranges (`192.0.2.0/24`) the API answers; any other gets 403"),
    Field("clock_window_sec", int, 60, check_range(1, 900),
          help="how far a request's signed timestamp may be from the host's clock, either way"),
    Field("max_request_bytes", int, 2 * 1024**3, check_positive, shown_default="`2147483648` (2 GiB)",
          help="largest request body (a release tarball); larger is refused with 413 before it is read"),
    Field("max_connections", int, 16, check_range(1, 1024),
          help="connections served at once; beyond, a new one is closed at once"),
    Field("header_timeout_sec", float, 10.0, check_positive,
          help="time a client has to finish the TLS handshake and send the request's headers"),
    Field("stall_timeout_sec", float, 60.0, check_positive,
          help="longest pause while a body is sent or an answer read"),
    Field("failures_per_minute", int, 10, check_range(1, 10000),
          help="refused requests (any 4xx answer, a failed TLS handshake) an address may have in a minute; beyond, it gets 429 "
               "until the minute is over"),
]


@dataclass(frozen=True)
class ApiConfig:
    # one attribute per API_FIELDS entry (tests/unit/test_config.py checks they match)
    certificate: Path
    key: Path
    secret_file: Path
    secret_credential: str
    allowed_ips: tuple[str, ...]
    clock_window_sec: int
    max_request_bytes: int
    max_connections: int
    header_timeout_sec: float
    stall_timeout_sec: float
    failures_per_minute: int


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
    api: ApiConfig


def default_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load(path: Path) -> AgentConfig:
    """Load and validate; a missing file means all defaults, anything malformed is a ConfigError."""
    from_file = path.exists()
    data = read_toml(path) if from_file else {}
    unknown = sorted(set(data) - {"agent", "api"})
    if unknown:
        raise ConfigError(f"{path}: unknown table or key '{unknown[0]}'",
                          hint="the agent's settings live under [agent], the HTTPS API's under [api]")
    values = _typed(parse_table(data.get("agent", {}), AGENT_FIELDS, path, prefix="agent."), AGENT_FIELDS)
    api = _typed(parse_table(data.get("api", {}), API_FIELDS, path, prefix="api."), API_FIELDS)
    api["allowed_ips"] = tuple(api["allowed_ips"])
    return AgentConfig(path=path, from_file=from_file, api=ApiConfig(**api), **values)


def _typed(values: dict, fields: list[Field]) -> dict:
    paths = {f.name for f in fields if f.check is check_absolute_path}
    return {name: Path(value) if name in paths else value for name, value in values.items()}
