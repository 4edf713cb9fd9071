"""App definitions: /etc/bloom/apps/APP.toml, one file an app."""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloom_agent.config.checks import TRIP_SLACK_SEC, CheckSpec, parse_checks
from bloom_agent.config.schema import Field, check_absolute_path, check_positive, parse_table, read_toml
from bloom_agent.errors import ConfigError

DEFAULT_APPS_DIR = Path("/etc/bloom/apps")
DEFAULT_RELEASES_ROOT = Path("/var/lib/bloom/releases")

# Unit names are built from it (APP.socket, APP@VERSION.service): no '@', no '.', nothing to escape.
_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}", re.ASCII)
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}", re.ASCII)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _check_listen(value: list) -> str | None:
    if not value:
        return "must list at least one address"
    for item in value:
        if not isinstance(item, str):
            return f"every address must be a string, got {item!r}"
        problem = _listen_problem(item)
        if problem:
            return f"{item!r}: {problem}"
    return None


def _listen_problem(address: str) -> str | None:
    if address.startswith("/"):
        return None if len(address) < 108 else "a Unix socket path must be shorter than 108 bytes"
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return 'expected "HOST:PORT", "[IPV6]:PORT" or an absolute Unix socket path'
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return f"{host!r} is not an IP address"
    if ":" in host and not host.startswith("["):
        return "write IPv6 addresses in brackets, e.g. \"[::]:443\""
    return None


def _check_exec(value: str) -> str | None:
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        return f"cannot be parsed as a command line: {exc}"
    if not argv:
        return "must not be empty"
    if ".." in Path(argv[0]).parts:
        return "the program path must not contain '..'"
    return None


def _check_user(value: str) -> str | None:
    return None if _USER_NAME.fullmatch(value) else f"{value!r} is not a valid user or group name"


def _check_environment(value: dict) -> str | None:
    for key, item in value.items():
        if not _ENV_NAME.fullmatch(key):
            return f"{key!r} is not a valid environment variable name"
        if not isinstance(item, str):
            return f"value of {key!r} must be a string, got {item!r}"
    return None


def _check_non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def _check_patterns(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str):
            return f"every pattern must be a string, got {item!r}"
        try:
            re.compile(item)
        except re.error as exc:
            return f"{item!r} is not a valid regular expression: {exc}"
    return None


def _check_commands(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str) or not item.strip():
            return f"every entry must be a non-empty command string, got {item!r}"
    return None


def _check_paths(value: list) -> str | None:
    for item in value:
        if not isinstance(item, str) or not item.startswith("/"):
            return f"every entry must be an absolute path, got {item!r}"
    return None


APP_FIELDS = [
    Field("listen", list, None, _check_listen),
    Field("exec", str, None, _check_exec),
    Field("user", str, "", _check_user),
    Field("group", str, "", _check_user),
    Field("environment", dict, {}, _check_environment),
    Field("notify", bool, True),
    Field("ready_timeout_sec", float, 30.0, check_positive),
    Field("stop_timeout_sec", float, 30.0, check_positive),
    Field("watchdog_sec", float, 0.0, _check_non_negative),
    Field("probation_sec", float, 30.0, _check_non_negative),
    Field("keep_releases", int, 5, check_positive),
    Field("releases_dir", str, "", check_absolute_path),
    Field("require_checksum", bool, False),
    Field("min_free_bytes", int, 100 * 1024 * 1024, _check_non_negative),
    Field("max_release_bytes", int, 2 * 1024**3, check_positive),
    # Hardening opt-outs: sandboxed unless the app says it cannot be.
    Field("sandbox", bool, True),
    Field("read_write_paths", list, [], _check_paths),
    Field("private_network", bool, False),
    # journald's per-unit rate limit (unset: journald's own). A release over it has its lines dropped
    # and a "Suppressed N messages" entry, which probation counts as N errors: chatty apps raise it.
    Field("log_rate_limit_interval_sec", float, None, _check_non_negative),
    Field("log_rate_limit_burst", int, None, _check_non_negative),
    # Probation monitors (the unit's crashes, restarts and watchdog are always watched).
    Field("max_error_rate_per_minute", int, 20, _check_non_negative),
    Field("error_patterns", list, [], _check_patterns),
    Field("health_check", list, []),
    # Hooks: shell commands run with the event as JSON on stdin.
    Field("on_switch", list, [], _check_commands),
    Field("on_rollback", list, [], _check_commands),
    Field("on_rollback_failure", list, [], _check_commands),
]
REQUIRED = ("listen", "exec")


@dataclass(frozen=True)
class AppConfig:
    name: str
    path: Path
    listen: tuple[str, ...]
    exec: str
    user: str
    group: str
    environment: dict[str, str]
    notify: bool
    ready_timeout_sec: float
    stop_timeout_sec: float
    watchdog_sec: float
    probation_sec: float
    keep_releases: int
    releases_dir: Path
    require_checksum: bool
    min_free_bytes: int
    max_release_bytes: int
    sandbox: bool
    read_write_paths: tuple[str, ...]
    private_network: bool
    log_rate_limit_interval_sec: float | None
    log_rate_limit_burst: int | None
    max_error_rate_per_minute: int
    error_patterns: tuple[str, ...]
    health_checks: tuple[CheckSpec, ...]
    on_switch: tuple[str, ...]
    on_rollback: tuple[str, ...]
    on_rollback_failure: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.exec)

    @property
    def socket_unit(self) -> str:
        return f"{self.name}.socket"

    @property
    def template_unit(self) -> str:
        return f"{self.name}@.service"

    def instance_unit(self, instance: str) -> str:
        return f"{self.name}@{instance}.service"


def validate_name(name: str) -> str:
    if not _APP_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid app name {name!r}: use lower-case letters, digits, '-' and '_', starting with a letter or digit"
        )
    return name


def load_app(path: Path, releases_root: Path = DEFAULT_RELEASES_ROOT) -> AppConfig:
    name = path.name.removesuffix(".toml")
    if not _APP_NAME.fullmatch(name):
        raise ConfigError(f"{path}: invalid app name {name!r} (from the file name): use a-z, 0-9, '-' and '_'")
    values = parse_table(read_toml(path), APP_FIELDS, path)
    for key in REQUIRED:
        if values[key] is None:
            raise ConfigError(f"{path}: missing required key '{key}'", hint=_EXAMPLE)
    return AppConfig(
        name=name,
        path=path,
        listen=tuple(values["listen"]),
        exec=values["exec"],
        user=values["user"],
        group=values["group"],
        environment=dict(values["environment"]),
        notify=values["notify"],
        ready_timeout_sec=values["ready_timeout_sec"],
        stop_timeout_sec=values["stop_timeout_sec"],
        watchdog_sec=values["watchdog_sec"],
        probation_sec=values["probation_sec"],
        keep_releases=values["keep_releases"],
        releases_dir=Path(values["releases_dir"]) if values["releases_dir"] else releases_root / name,
        require_checksum=values["require_checksum"],
        min_free_bytes=values["min_free_bytes"],
        max_release_bytes=values["max_release_bytes"],
        sandbox=values["sandbox"],
        read_write_paths=tuple(values["read_write_paths"]),
        private_network=values["private_network"],
        log_rate_limit_interval_sec=values["log_rate_limit_interval_sec"],
        log_rate_limit_burst=values["log_rate_limit_burst"],
        max_error_rate_per_minute=values["max_error_rate_per_minute"],
        error_patterns=tuple(values["error_patterns"]),
        health_checks=parse_checks(values["health_check"], path, tuple(values["listen"])),
        on_switch=tuple(values["on_switch"]),
        on_rollback=tuple(values["on_rollback"]),
        on_rollback_failure=tuple(values["on_rollback_failure"]),
    )


def load_apps(apps_dir: Path, releases_root: Path = DEFAULT_RELEASES_ROOT) -> tuple[dict[str, AppConfig], dict[str, str]]:
    """All app files; returns (apps, errors by file) so one broken file does not hide the others."""
    apps: dict[str, AppConfig] = {}
    errors: dict[str, str] = {}
    if not apps_dir.is_dir():
        return apps, errors
    for path in sorted(apps_dir.glob("*.toml")):
        try:
            app = load_app(path, releases_root)
        except ConfigError as err:
            errors[str(path)] = str(err)
            continue
        apps[app.name] = app
    return apps, errors


def refuse_shared_addresses(apps: dict[str, AppConfig], first: set[str]) -> dict[str, str]:
    """Two apps cannot listen on one address: the second socket unit would fail to start with
    EADDRINUSE, at deploy time. Refuse the later app file now, naming both files; apps in ``first``
    (those already loaded) keep their addresses. Returns the refused apps' errors by file; they are
    removed from ``apps``."""
    errors: dict[str, str] = {}
    taken: dict[str, AppConfig] = {}
    for name in sorted(apps, key=lambda n: (n not in first, n)):
        app = apps[name]
        clash = next(((mine, theirs, other) for mine in app.listen for theirs, other in taken.items()
                      if addresses_clash(mine, theirs)), None)
        if clash is None:
            taken.update((address, app) for address in app.listen)
            continue
        mine, theirs, other = clash
        errors[str(app.path)] = (f"{app.path}: listen address {mine} clashes with {theirs} of app {other.name!r} "
                                 f"({other.path}); give each app addresses of its own")
        del apps[name]
    return errors


def addresses_clash(a: str, b: str) -> bool:
    """Would binding both fail? Same Unix path; or same port with the same host or a wildcard host
    (systemd's default BindIPv6Only=default makes [::] take IPv4 too)."""
    if a.startswith("/") or b.startswith("/"):
        return a == b
    host_a, port_a = _split_address(a)
    host_b, port_b = _split_address(b)
    if port_a != port_b:
        return False
    return host_a == host_b or host_a.is_unspecified or host_b.is_unspecified


def _split_address(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, _, port = address.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def probation_warnings(app: AppConfig) -> list[str]:
    """Checks that cannot trip within probation_sec. Probation is extended while such a check fails,
    so they are safe, but a switch then takes longer than the app file says."""
    warnings = []
    for spec in app.health_checks:
        needed = spec.time_to_trip
        if needed > app.probation_sec:
            warnings.append(
                f"{app.path}: health check {spec.name} needs up to {needed:g} s to trip ({spec.failures} failures x "
                f"({spec.interval_sec:g} s interval + {spec.timeout_sec:g} s timeout) + {TRIP_SLACK_SEC:g} s), "
                f"more than probation_sec = {app.probation_sec:g}: probation is extended while it fails; raise "
                f"probation_sec to at least {needed:g}, or lower failures, interval_sec or timeout_sec")
    return warnings


_EXAMPLE = 'a minimal app file:\n  listen = ["127.0.0.1:8080"]\n  exec = "bin/server --port-from-systemd"'


def describe(app: AppConfig) -> dict[str, Any]:
    return {"name": app.name, "file": str(app.path), "listen": list(app.listen), "exec": app.exec,
            "releases_dir": str(app.releases_dir), "probation_sec": app.probation_sec}
