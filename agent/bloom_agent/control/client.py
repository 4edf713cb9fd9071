"""The client side of the control protocol, used by bloomctl (and by anything scripting the agent)."""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bloom_agent.control import apiclient, protocol
from bloom_agent.errors import AgentNotRunning, BloomError, InvalidArguments, PermissionDenied, ProtocolError

DEFAULT_SOCKET = Path("/run/bloom/control.sock")
SOCKET_ENV = "BLOOM_SOCKET"
HOST_ENV = "BLOOM_HOST"
# The ssh command line for -H (default: ssh); e.g. "ssh -F ~/.ssh/deploy_config".
SSH_ENV = "BLOOM_SSH"
URL_ENV, SECRET_FILE_ENV, CACERT_ENV = apiclient.URL_ENV, apiclient.SECRET_FILE_ENV, apiclient.CACERT_ENV


def default_socket() -> Path:
    return Path(os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


@dataclass(frozen=True)
class Api:
    """Where the HTTPS API is, and what to reach it with (``bloomctl --url``)."""

    url: str
    secret_file: Path | None
    cacert: Path | None = None

    def __post_init__(self) -> None:
        apiclient.parse_url(self.url)  # a wrong URL is said before anything is read or sent


def call(command: str, args: dict[str, Any] | None = None, *, socket_path: Path | None = None,
         on_progress: Callable[[dict], None] | None = None, timeout: float | None = 60.0,
         upload: BinaryIO | None = None, host: str | None = None, api: Api | None = None) -> Any:
    """Send one request (and ``upload``, a file opened by the caller, after it); return the result or
    raise the agent's error as a typed BloomError. With ``host`` ([USER@]HOST[:PORT]) the request goes
    over ssh to ``bloomctl stdio-bridge`` there, which passes it to that host's agent; with ``api``, to
    that agent's HTTPS API, signed."""
    if api is not None:
        return apiclient.call(api.url, command, args, secret_file=api.secret_file, cacert=api.cacert,
                              on_progress=on_progress, timeout=timeout, upload=upload)
    ended: dict[str, int] = {}  # how the ssh process ended, for a message when no answer came
    connection = _over_ssh(host, ended) if host else _over_socket(socket_path or default_socket(), timeout)
    with connection as (send, stream):
        send(protocol.encode_request(command, args, upload=upload is not None))
        if upload is not None:
            _send_upload(send, upload)
        result = protocol.read_answer(stream, on_progress)
        if result is not protocol.NO_ANSWER:
            return result
    if host and ended.get("code") == 255:
        raise BloomError(f"cannot reach {host} over ssh (ssh exited with 255)",
                         hint=f"check that 'ssh {host}' works; its own message is above")
    if host:
        raise ProtocolError(f"no answer from {host} (the far side exited with {ended.get('code')})",
                            hint=f"check that bloom-agent is installed and running on {host}")
    raise ProtocolError("the agent closed the connection without an answer", hint="see: journalctl -u bloom-agent")


Send = Callable[[bytes], None]


@contextlib.contextmanager
def _over_socket(path: Path, timeout: float | None) -> Iterator[tuple[Send, BinaryIO]]:
    with _connect(path, timeout) as sock, sock.makefile("rb") as stream:
        yield sock.sendall, stream


@contextlib.contextmanager
def _over_ssh(host: str, ended: dict[str, int]) -> Iterator[tuple[Send, BinaryIO]]:
    argv = ssh_command(host)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as exc:
        raise BloomError(f"cannot run {argv[0]}: {exc.strerror or exc}",
                         hint=f"install openssh-client, or set {SSH_ENV} to the ssh command to use") from exc

    def send(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()

    try:
        yield send, proc.stdout
    except (BrokenPipeError, ConnectionResetError):
        pass  # ssh or the far side went away: said below
    finally:
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        ended["code"] = proc.wait()


def ssh_command(host: str, remote: tuple[str, ...] = ("bloomctl", "stdio-bridge")) -> list[str]:
    """ssh to [USER@]HOST[:PORT] running ``remote`` there: by default the bridge to that host's agent
    (like systemctl -H). ssh hands the far side one command line, so it is quoted here."""
    user, _, rest = host.rpartition("@")
    name, _, port = rest.rpartition(":") if rest.count(":") == 1 else ("", "", "")
    name = name or rest
    if not name or (port and not port.isdigit()) or name.startswith("-") or (user and user.startswith("-")):
        raise InvalidArguments(f"cannot read host {host!r}: expected [USER@]HOST[:PORT]")
    argv = shlex.split(os.environ.get(SSH_ENV) or "ssh") + ["-xT"]
    argv += ["-p", port] if port else []
    argv += ["-l", user] if user else []
    return argv + [name, "--", shlex.join(remote)]


def stdio_bridge(socket_path: Path) -> int:
    """Pass a protocol exchange between standard input/output and the agent's socket: the far end of
    ``bloomctl -H``. The agent sees the ssh user as the caller (SO_PEERCRED of this process)."""
    try:
        sock = _connect(socket_path, None)
    except BloomError as err:
        _write_all(STDOUT, protocol.error(err))  # the caller's bloomctl shows it as its own
        return 0

    def forward() -> None:
        # Raw descriptors, not sys.stdin: a thread still blocked in a read must not hold a lock the
        # interpreter wants at exit.
        try:
            while data := os.read(STDIN, protocol.CHUNK_BYTES):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the agent closed first: what it sent back still goes out

    threading.Thread(target=forward, daemon=True).start()
    with sock:
        while data := sock.recv(protocol.CHUNK_BYTES):
            _write_all(STDOUT, data)
    return 0


STDIN, STDOUT = 0, 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send_upload(send: Send, upload: BinaryIO) -> None:
    try:
        while chunk := upload.read(protocol.CHUNK_BYTES):
            send(protocol.encode_chunk(chunk))
        send(protocol.encode_chunk(b""))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent refused before reading it all; its answer says why


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
