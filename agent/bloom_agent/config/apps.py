"""App definitions: /etc/bloom/apps/APP.toml, one file an app."""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloom_agent.config.checks import TRIP_SLACK_SEC, CheckSpec, parse_checks
from bloom_agent.config.database import DatabaseConfig, parse_database
from bloom_agent.config.schema import Field, check_non_negative, check_positive, parse_table, read_toml
from bloom_agent.errors import ConfigError

DEFAULT_APPS_DIR = Path("/etc/bloom/apps")
DEFAULT_RELEASES_ROOT = Path("/var/lib/bloom/releases")

# Unit names are built from it (APP.socket, APP@VERSION.service): no '@', no '.', nothing to escape.
_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}", re.ASCII)
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}", re.ASCII)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
# Paths go into unit files unquoted (ListenStream=, ReadWritePaths=, WorkingDirectory=): no space that
# would make two paths, no % specifier, no $, quote or control character. Strict, and enough for paths.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+=,:~-]*", re.ASCII)
_SAFE_PATH_TEXT = "letters, digits and . _ - + @ = , : ~"


def _path_problem(path: str) -> str | None:
    if not path.startswith("/"):
        return f"{path!r} is not an absolute path"
    if not _SAFE_PATH.fullmatch(path):
        bad = next(c for c in path[1:] if not _SAFE_PATH.fullmatch("/" + c))
        return f"{path!r}: {bad!r} is not allowed in a path ({_SAFE_PATH_TEXT} only)"
    return None


def _control_problem(text: str) -> str | None:
    """A newline (or any control character) in a value would end its line in the unit file."""
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    return None if bad is None else f"{text[:40]!r} contains a control character ({bad!r})"


def _check_safe_path(value: str) -> str | None:
    return _path_problem(value) if value else None


_check_safe_path.describe = "absolute path"


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
        if len(address) >= 108:
            return "a Unix socket path must be shorter than 108 bytes"
        return _path_problem(address)
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


def _check_socket_mode(value: str) -> str | None:
    """An octal file mode as systemd's SocketMode= takes it; no setuid, setgid or sticky bit."""
    if not re.fullmatch(r"0?[0-7]{3}", value, re.ASCII):
        return f'{value!r} is not a file mode: write three octal digits as a string, e.g. "0660"'
    return None


_check_socket_mode.describe = 'octal mode, e.g. `"0660"`'


def _check_socket_owner(value: str) -> str | None:
    return _check_user(value) if value else None


def _check_exec(value: str) -> str | None:
    if _control_problem(value):
        return _control_problem(value)
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
        if _control_problem(item):
            return f"value of {key!r}: {_control_problem(item)}"
    return None


_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", re.ASCII)


def _check_credentials(value: dict) -> str | None:
    for name, path in value.items():
        if not _CREDENTIAL_NAME.fullmatch(name):
            return f"{name!r} is not a valid credential name (letters, digits, '_', '.', '-')"
        if not isinstance(path, str):
            return f"the file of credential {name!r} must be a path string, got {path!r}"
        problem = _path_problem(path)
        if problem:
            return f"credential {name!r}: {problem}"
    return None


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
        if not isinstance(item, str):
            return f"every entry must be an absolute path, got {item!r}"
        if _path_problem(item):
            return _path_problem(item)
    return None


APP_FIELDS = [
    Field("listen", list, None, _check_listen, required=True, kind="list of strings",
          help="addresses the app's socket unit listens on"),
    # Unix socket addresses only: who may connect is decided by the socket file's owner and mode.
    Field("socket_user", str, "", _check_socket_owner, shown_default="`root`",
          help="owner of the Unix socket files in `listen` (`SocketUser=`)"),
    Field("socket_group", str, "", _check_socket_owner, shown_default="`root`",
          help="group of the Unix socket files in `listen` (`SocketGroup=`)"),
    Field("socket_mode", str, "0666", _check_socket_mode,
          help="mode of the Unix socket files in `listen` (`SocketMode=`); connecting needs write permission"),
    Field("exec", str, None, _check_exec, required=True,
          help="command line of the app, program relative to the release directory"),
    Field("user", str, "", _check_user,
          help="run as this existing user; empty: a dynamic user (`DynamicUser=yes`)"),
    Field("group", str, "", _check_user, help="`Group=`"),
    Field("environment", dict, {}, _check_environment, kind="table of strings",
          help="extra environment variables"),
    Field("environment_files", list, [], _check_paths, kind="list of absolute paths",
          help="`EnvironmentFile=`: `KEY=value` lines read by systemd (as root) when a release starts; for "
               "secrets, in a file only root can read"),
    Field("credentials", dict, {}, _check_credentials, kind="table of paths",
          help="`LoadCredential=NAME:PATH`: files the release reads from `$CREDENTIALS_DIRECTORY/NAME`, "
               "not from its environment"),
    Field("notify", bool, True,
          help="the app sends `READY=1` (`Type=notify`); `false`: ready as soon as it is executed (`Type=exec`)"),
    Field("ready_timeout_sec", float, 30.0, check_positive,
          help="time to become ready and pass the pre-switch checks"),
    Field("stop_timeout_sec", float, 30.0, check_positive,
          help="time a stopping release has to drain before it is killed"),
    Field("watchdog_sec", float, 0.0, check_non_negative, help="`WatchdogSec=`; 0: no watchdog"),
    Field("probation_sec", float, 30.0, check_non_negative,
          help="how long a new release is watched after the old one stopped; 0: no probation"),
    Field("keep_releases", int, 5, check_positive, help="releases kept on disk after a successful switch"),
    Field("releases_dir", str, "", _check_safe_path, shown_default="`RELEASES_DIR/APP`",
          help="this app's release directory"),
    Field("require_checksum", bool, False, help="refuse a tarball without a SHA-256 to check it against"),
    Field("min_free_bytes", int, 100 * 1024 * 1024, check_non_negative, shown_default="`104857600` (100 MiB)",
          help="free space an install must leave on the release file system"),
    Field("max_release_bytes", int, 2 * 1024**3, check_positive, shown_default="`2147483648` (2 GiB)",
          help="largest release, unpacked (sum of regular files)"),
    # Hardening opt-outs: sandboxed unless the app says it cannot be.
    Field("sandbox", bool, True, help="systemd hardening of the app's service"),
    Field("read_write_paths", list, [], _check_paths, kind="list of absolute paths",
          help="writable paths under the sandbox (`ReadWritePaths=`)"),
    Field("private_network", bool, False, help="`PrivateNetwork=yes`"),
    # journald's per-unit rate limit (unset: journald's own). A release over it has its lines dropped
    # and a "Suppressed N messages" entry, which probation counts as N errors: chatty apps raise it.
    Field("log_rate_limit_interval_sec", float, None, check_non_negative, shown_default="unset (journald's, 30 s)",
          help="`LogRateLimitIntervalSec=`: journald's rate-limit window for the release's lines; 0: no limit"),
    Field("log_rate_limit_burst", int, None, check_non_negative, shown_default="unset (journald's, 10000)",
          help="`LogRateLimitBurst=`: lines per window before journald drops the rest"),
    # Probation monitors (the unit's crashes, restarts and watchdog are always watched).
    Field("max_error_rate_per_minute", int, 20, check_non_negative,
          help="probation: more errors than this in a minute roll back"),
    Field("error_patterns", list, [], _check_patterns, kind="list of regular expressions",
          help="probation: journal lines matching one count as errors, whatever their priority"),
    Field("health_check", list, [], kind="array of tables", shown_default="none",
          help="[health checks](#health-checks)"),
    Field("pre_switch", list, [], _check_commands, kind="list of command strings",
          help="run before a deploy starts the new release, in its directory as the app's `user`; one "
               "that fails refuses the switch"),
    Field("database", dict, None, kind="table", shown_default="none",
          help="[the database a release migrates](#database)"),
    # Hooks: shell commands run with the event as JSON on stdin.
    Field("on_switch", list, [], _check_commands, kind="list of command strings",
          help="[hooks](#hooks): after a switch that ended `done`"),
    Field("on_rollback", list, [], _check_commands, kind="list of command strings",
          help="[hooks](#hooks): after a switch that ended `failed` or `rolled-back`"),
    Field("on_rollback_failure", list, [], _check_commands, kind="list of command strings",
          help="[hooks](#hooks): after a switch that ended `degraded`"),
]


@dataclass(frozen=True)
class AppConfig:
    name: str
    path: Path
    # one attribute per APP_FIELDS entry, health_check parsed into health_checks
    # (tests/unit/test_config.py checks they match)
    listen: tuple[str, ...]
    socket_user: str
    socket_group: str
    socket_mode: str
    exec: str
    user: str
    group: str
    environment: dict[str, str]
    environment_files: tuple[str, ...]
    credentials: dict[str, str]
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
    pre_switch: tuple[str, ...]
    database: DatabaseConfig | None

    @property
    def migrates(self) -> bool:
        return bool(self.database and self.database.migrate)

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
    table = read_toml(path)
    values = parse_table(table, APP_FIELDS, path)
    for field in APP_FIELDS:
        if field.required and values[field.name] is None:
            raise ConfigError(f"{path}: missing required key '{field.name}'", hint=_EXAMPLE)
    checks = parse_checks(values.pop("health_check"), path, tuple(values["listen"]))
    if values["database"] is not None:
        values["database"] = parse_database(values["database"], path, values["user"])
    unix = any(address.startswith("/") for address in values["listen"])
    for key in ("socket_user", "socket_group", "socket_mode"):
        if key in table and not unix:
            raise ConfigError(f"{path}: key '{key}' applies to Unix socket addresses, and listen has none",
                              hint=f"remove {key}, or add an absolute socket path to listen")
    if values["pre_switch"] and not values["user"]:
        raise ConfigError(f"{path}: pre_switch commands run as the app's user, and 'user' is not set",
                          hint='set user = "NAME" (an existing system user)')
    own_dir = values.pop("releases_dir")
    releases_dir = Path(own_dir) if own_dir else releases_root / name
    # TOML lists become tuples: an AppConfig is compared and hashed as a value.
    frozen = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return AppConfig(name=name, path=path, releases_dir=releases_dir, health_checks=checks, **frozen)


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


def secret_file_warnings(app: AppConfig) -> list[str]:
    """Environment files and credentials that a release would not find, or that others can read: systemd
    reads them as root, so nothing but root needs to."""
    warnings = []
    for what, path in [("environment file", p) for p in app.environment_files] + \
                      [(f"credential {name!r}", p) for name, p in app.credentials.items()]:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            warnings.append(f"{app.path}: {what} {path}: {exc.strerror}; a release will not start without it")
            continue
        if mode & 0o077:
            warnings.append(f"{app.path}: {what} {path} is readable by others (mode {mode & 0o777:04o}); "
                            f"make it root's alone: chmod 600 {path}")
    return warnings


def socket_owner_warnings(app: AppConfig) -> list[str]:
    """A socket owner that does not exist makes systemd fail the socket, at the next deploy."""
    warnings = []
    for key, name, lookup in (("socket_user", app.socket_user, pwd.getpwnam), ("socket_group", app.socket_group,
                                                                                 grp.getgrnam)):
        if not name:
            continue
        if name in ("nobody", "nogroup"):
            # systemd says "Special user nobody configured, this is not safe!": whatever runs as
            # nobody (NFS's squashed users among them) could take the socket over.
            warnings.append(f"{app.path}: {key} {name!r} is shared by unrelated programs, which could then "
                            f"connect to or replace the socket; use a user or group of the app's own")
            continue
        try:
            lookup(name)
        except KeyError:
            warnings.append(f"{app.path}: {key} {name!r} does not exist on this host; the socket will not start "
                            f"until it does")
    return warnings


def app_warnings(app: AppConfig) -> list[str]:
    """What ``bloomctl reload`` and ``bloom-agent --check-config`` warn about an app file that loads."""
    return probation_warnings(app) + secret_file_warnings(app) + socket_owner_warnings(app)


_EXAMPLE = 'a minimal app file:\n  listen = ["127.0.0.1:8080"]\n  exec = "bin/server --port-from-systemd"'


def describe(app: AppConfig) -> dict[str, Any]:
    return {"name": app.name, "file": str(app.path), "listen": list(app.listen), "exec": app.exec,
            "releases_dir": str(app.releases_dir), "probation_sec": app.probation_sec}
