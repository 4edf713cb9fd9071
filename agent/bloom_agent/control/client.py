"""The client side of the control protocol, used by bloomctl (and by anything scripting the agent)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any, Callable

from bloom_agent.control import protocol
from bloom_agent.errors import AgentNotRunning, PermissionDenied, ProtocolError, from_wire

DEFAULT_SOCKET = Path("/run/bloom/control.sock")
SOCKET_ENV = "BLOOM_SOCKET"


def default_socket() -> Path:
    return Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


def call(command: str, args: dict[str, Any] | None = None, *, socket_path: Path | None = None,
         on_progress: Callable[[dict], None] | None = None, timeout: float | None = 60.0) -> Any:
    """Send one request; return the result or raise the agent's error as a typed BloomError."""
    path = socket_path or default_socket()
    with _connect(path, timeout) as sock:
        sock.sendall(protocol.encode_request(command, args))
        with sock.makefile("rb") as stream:
            for line in stream:
                message = protocol.decode_response(line)
                if "progress" in message:
                    if on_progress is not None:
                        on_progress(message["progress"])
                    continue
                if message.get("ok"):
                    return message.get("result")
                raise from_wire(message.get("error") or {})
    raise ProtocolError("the agent closed the connection without an answer", hint="see: journalctl -u bloom-agent")


def _connect(path: Path, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise AgentNotRunning(str(path)) from exc
        if exc.errno == errno.EACCES:
            raise PermissionDenied(
                f"permission denied: cannot connect to {path}",
                hint="run as root, or add your user to the 'bloom' group (usermod -aG bloom USER) and log in again",
            ) from exc
        raise
    return sock
