"""Typed errors. Each owns its message, an optional hint for the operator, and an exit code.

Library code raises these; only the CLI entry points turn them into ``sys.exit``.
The ``code`` travels over the control protocol so a client can rebuild the same error.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# bloomctl status: an app is degraded or has no release running (systemctl status says 3 too).
EXIT_NOT_SERVING = 3
# bloomctl stopped waiting (Ctrl-C) while the agent carries on: the shell's code for SIGINT.
EXIT_DETACHED = 130
# sysexits.h EX_UNAVAILABLE: the agent cannot reach systemd over D-Bus; the unit lists it in
# RestartPreventExitStatus= too, since a restart a second later finds no bus either.
EXIT_UNAVAILABLE = getattr(os, "EX_UNAVAILABLE", 69)
# sysexits.h EX_CONFIG: the unit sets RestartPreventExitStatus=78, so systemd does not loop on it.
EXIT_CONFIG = os.EX_CONFIG if hasattr(os, "EX_CONFIG") else 78


class BloomError(Exception):
    """Base of every error the agent or bloomctl reports to a person."""

    code = "error"
    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"

    def to_wire(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class ConfigError(BloomError):
    code = "config"
    exit_code = EXIT_CONFIG


class AgentNotRunning(BloomError):
    code = "not_running"

    def __init__(self, socket_path: str) -> None:
        super().__init__(
            "bloom-agent is not running (start it with: systemctl start bloom-agent)",
            hint=f"no agent answers on {socket_path}",
        )


class PermissionDenied(BloomError):
    code = "permission_denied"


class Unauthorized(BloomError):
    """An HTTPS API request without a valid signature: missing, wrong, outside the clock window, replayed."""

    code = "unauthorized"


class AddressRefused(BloomError):
    """An HTTPS API request from an address outside [api] allowed_ips."""

    code = "address_refused"


class RateLimited(BloomError):
    """An address refused too often lately: its requests wait until the minute is over."""

    code = "rate_limited"


class ProtocolError(BloomError):
    code = "protocol"


class RequestTooLarge(ProtocolError):
    code = "request_too_large"


class UnknownCommand(ProtocolError):
    code = "unknown_command"


class InvalidArguments(BloomError):
    code = "invalid_arguments"
    exit_code = EXIT_USAGE


class InvalidVersion(BloomError):
    code = "invalid_version"


class Busy(BloomError):
    """Another operation holds the app: one at a time per app."""

    code = "busy"


class UnknownApp(BloomError):
    code = "unknown_app"


class ReleaseError(BloomError):
    """A release cannot be used as asked: not installed, in use, failed before."""

    code = "release"


class InstallError(BloomError):
    """A tarball refused, or an install that could not be completed; nothing was left behind."""

    code = "install"


class StateError(BloomError):
    code = "state"


class DatabaseError(BloomError):
    """A backup, a migration or a restore of an app's database did not succeed."""

    code = "database"


class SystemdUnavailable(BloomError):
    code = "systemd_unavailable"


class ListenError(BloomError):
    """An app's changed socket could not be put in place; what listened before listens again."""

    code = "listen"


class NoSystemBus(SystemdUnavailable):
    """At start-up: the agent drives systemd over the D-Bus system bus and cannot reach it."""

    code = "no_system_bus"
    exit_code = EXIT_UNAVAILABLE


class SystemdCallFailed(BloomError):
    code = "systemd_call_failed"


# Every error the agent sends, by wire code, so the client raises the same type with the same exit
# code. A test checks that no BloomError subclass of the package is missing.
_BY_CODE = {
    cls.code: cls
    for cls in (
        BloomError,
        ConfigError,
        AgentNotRunning,
        PermissionDenied,
        Unauthorized,
        AddressRefused,
        RateLimited,
        ProtocolError,
        RequestTooLarge,
        UnknownCommand,
        InvalidArguments,
        InvalidVersion,
        Busy,
        UnknownApp,
        ReleaseError,
        InstallError,
        StateError,
        DatabaseError,
        SystemdUnavailable,
        ListenError,
        NoSystemBus,
        SystemdCallFailed,
    )
}


def from_wire(payload: dict) -> BloomError:
    """Rebuild an error sent by the agent; unknown codes become a plain BloomError."""
    cls = _BY_CODE.get(payload.get("code", ""), BloomError)
    err = BloomError.__new__(cls)
    BloomError.__init__(err, str(payload.get("message", "unknown error")), payload.get("hint"))
    return err
