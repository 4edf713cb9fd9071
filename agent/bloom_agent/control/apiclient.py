"""The HTTPS API's client (``bloomctl --url``): one signed request, the control protocol's lines back."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shutil
import socket
import ssl
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from bloom_agent.control import http11, protocol, signing
from bloom_agent.errors import BloomError, InvalidArguments, ProtocolError

DEFAULT_PORT = 9443
URL_ENV = "BLOOM_URL"
SECRET_FILE_ENV = "BLOOM_API_SECRET_FILE"
CACERT_ENV = "BLOOM_API_CACERT"
# How long to wait for "100 Continue" before sending a tarball anyway (the agent answers at once when it
# refuses the request, so the tarball is not sent for nothing).
CONTINUE_WAIT = 5.0


def parse_url(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        raise InvalidArguments(f"cannot use {url!r}: the API is spoken over https://HOST[:PORT] only")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidArguments(f"cannot use {url!r}: give only https://HOST[:PORT]")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InvalidArguments(f"cannot use {url!r}: the port is not a number") from None
    if not parts.hostname:
        raise InvalidArguments(f"cannot use {url!r}: no host")
    return parts.hostname, port


def read_secret(path: Path | None) -> bytes:
    if path is None:
        raise InvalidArguments("--url needs the API's shared secret: --secret-file FILE "
                               f"(or ${SECRET_FILE_ENV})")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArguments(f"cannot read the secret file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return signing.parse_secret(text, str(path))
    except ValueError as exc:
        raise InvalidArguments(str(exc)) from None


def target(command: str, args: dict[str, Any] | None) -> str:
    """``/v1/COMMAND?NAME=VALUE&...``: the arguments as text (true/false, numbers in decimal); none sent
    for an argument left out (None)."""
    pairs = [(k, _text(v)) for k, v in (args or {}).items() if v is not None]
    query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote, safe="")
    return f"/v1/{command}" + (f"?{query}" if query else "")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    raise InvalidArguments(f"an argument of type {type(value).__name__} cannot be sent over the API")


def call(url: str, command: str, args: dict[str, Any] | None, *, secret_file: Path | None,
         cacert: Path | None = None, on_progress: Callable[[dict], None] | None = None,
         timeout: float | None = 60.0, upload: BinaryIO | None = None) -> Any:
    host, port = parse_url(url)
    secret = read_secret(secret_file)
    path = target(command, args)
    with _body(upload) as (body, length, digest):
        headers = {"Host": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "User-Agent": "bloomctl",
                   "Content-Length": str(length), **signing.sign(secret, "POST", path, digest)}
        if length:
            headers["Expect"] = "100-continue"
        with _connect(url, host, port, cacert, timeout) as sock, sock.makefile("rb") as stream, _no_answer(url):
            sock.sendall(f"POST {path} HTTP/1.1\r\n".encode() + b"".join(
                f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")
            head = None
            if length:
                head = _interim(sock, stream)
                if head is None:
                    _send(sock, body)
            head = head or _final_head(stream)
            if head.headers.get("content-type") != "application/x-ndjson":
                raise BloomError(f"{url} answered HTTP {head.status}, and not as bloom-agent does",
                                 hint="is it the agent's API? (bloom-agent-api.socket on that host)")
            result = protocol.read_answer(http11.body_lines(stream, head), on_progress)
            if result is not protocol.NO_ANSWER:
                return result
    raise ProtocolError(f"{url} closed the connection without a final answer (HTTP {head.status})",
                        hint="see: journalctl -u bloom-agent on that host")


@contextlib.contextmanager
def _body(upload: BinaryIO | None) -> Iterator[tuple[BinaryIO | None, int, str]]:
    """The tarball, its length and its SHA-256, known before it is sent (the signature covers the
    digest); a pipe is spooled to a private temporary file first."""
    if upload is None:
        yield None, 0, signing.EMPTY_BODY_SHA256
        return
    with contextlib.ExitStack() as stack:
        if not _seekable_file(upload):
            spool = stack.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(upload, spool, 1024 * 1024)
            upload = spool
        upload.seek(0)
        digest, length = hashlib.sha256(), 0
        while chunk := upload.read(1024 * 1024):
            digest.update(chunk)
            length += len(chunk)
        upload.seek(0)
        yield upload, length, digest.hexdigest()


def _seekable_file(f: BinaryIO) -> bool:
    try:
        return os.path.isfile(f"/proc/self/fd/{f.fileno()}") and f.seekable()
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _connect(url: str, host: str, port: int, cacert: Path | None, timeout: float | None) -> Iterator[ssl.SSLSocket]:
    try:
        context = ssl.create_default_context(cafile=str(cacert) if cacert else None)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArguments(f"cannot use {cacert} to verify the API's certificate: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise BloomError(f"cannot connect to {url}: {exc.strerror or exc}",
                         hint="is the API on there? (bloom-agent-api.socket enabled, and the agent started after it; "
                              "docs/api.md)") from None
    try:
        sock = context.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raw.close()
        raise BloomError(f"cannot verify {url}'s certificate: {exc.verify_message}",
                         hint="pass the certificate (or its CA) with --cacert FILE, or set "
                              f"${CACERT_ENV}") from None
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        raise BloomError(f"TLS with {url} failed: {getattr(exc, 'reason', None) or exc}",
                         hint="the agent refuses an address not in its [api] allowed_ips only after the handshake; "
                              "see journalctl -u bloom-agent there") from None
    with sock:
        yield sock


@contextlib.contextmanager
def _no_answer(url: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise BloomError(f"no answer from {url} in time", hint="the agent may still be working on it: bloomctl "
                                                               "status shows what it does") from None
    except (ConnectionError, ssl.SSLError) as exc:
        raise ProtocolError(f"the connection to {url} broke: {exc}", hint="see: journalctl -u bloom-agent there") from None


def _interim(sock: ssl.SSLSocket, stream: BinaryIO) -> http11.ResponseHead | None:
    """After headers that expect 100 Continue: None when the body is to be sent (the agent said continue,
    or said nothing in time), else the final answer the agent gave without wanting the body."""
    if not sock.pending() and not select.select([sock], [], [], CONTINUE_WAIT)[0]:
        return None
    head = http11.read_response_head(stream)
    return None if head.status == 100 else head


def _final_head(stream: BinaryIO) -> http11.ResponseHead:
    head = http11.read_response_head(stream)
    while head.status == 100:
        head = http11.read_response_head(stream)
    return head


def _send(sock: ssl.SSLSocket, body: BinaryIO) -> None:
    try:
        while chunk := body.read(1024 * 1024):
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent stopped reading; its answer says why
