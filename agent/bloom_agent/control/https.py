"""The optional HTTPS API (docs/api.md): the control commands for tools that cannot use ssh.

Off unless bloom-agent-api.socket hands the agent its listening socket. One request per connection:
``POST /v1/COMMAND?ARG=VALUE&...``, signed (``signing.py``); the body is the release tarball for
install and deploy, empty otherwise. The answer is the control protocol's lines, the same JSON as on
the control socket, dispatched into the same command table.

Checks, cheapest first, each refusal logged with the address: the connection cap (closed at once), the
TLS handshake and headers within ``header_timeout_sec``, ``allowed_ips`` (403), the address's recent
refusals (429), the size (413), the signature, clock and nonce (401); the body is read only after all
of them, and checked against its signed digest.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import ssl
import stat
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bloom_agent.control import http11, protocol, signing
from bloom_agent.control.auth import Caller
from bloom_agent.control.server import Dispatch, Serving
from bloom_agent.errors import (AddressRefused, BloomError, ConfigError, ProtocolError, RateLimited, RequestTooLarge,
                                Unauthorized, UnknownCommand)

log = logging.getLogger(__name__)

# bloom-agent-api.socket's FileDescriptorName=: how the agent tells its socket from the control socket.
FD_NAME = "bloom-api"
PREFIX = "/v1/"
READ_BYTES = 1024 * 1024
# After an answer that did not need the body, what is still coming is read and dropped, at most this
# much for this long, so the client sees the answer instead of a reset connection.
LINGER_BYTES = 4 * 1024 * 1024
LINGER_SEC = 2.0
# Addresses whose refusals are counted; beyond, the oldest is forgotten.
MAX_TRACKED_ADDRESSES = 10_000

# The status of an answer that is one error line, by the error's wire code; a streamed answer is 200.
STATUS = {
    "unauthorized": 401, "address_refused": 403, "rate_limited": 429, "request_too_large": 413,
    "protocol": 400, "invalid_arguments": 400, "invalid_version": 400, "unknown_command": 404, "unknown_app": 404,
    "busy": 409, "release": 409, "state": 409, "install": 422, "systemd_unavailable": 503,
}


# The [api] table, config.agent.ApiConfig, read by attribute name: this room knows no config.
Settings = Any


@dataclass(frozen=True)
class Loaded:
    """The settings with what they name read: the TLS context, the secret, the address ranges."""

    settings: Settings
    tls: ssl.SSLContext
    secret: bytes
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in network for network in self.networks)


def load(settings: Settings, credentials_dir: str | None = None) -> Loaded:
    """Read the certificate, key and secret the settings name; ConfigError says which and why."""
    for name in ("key",) + (() if settings.secret_credential else ("secret_file",)):
        _check_private(Path(getattr(settings, name)), f"api.{name}")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        tls.load_cert_chain(settings.certificate, settings.key)
    except FileNotFoundError as exc:
        raise ConfigError(f"api.certificate/key: {exc.filename}: no such file",
                          hint="make them (docs/api.md shows how with openssl) or fix the paths in [api]") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"api.certificate {settings.certificate} and api.key {settings.key}: cannot be used: "
                          f"{getattr(exc, 'reason', None) or exc}",
                          hint="both must be PEM, and the key must be the certificate's") from None
    return Loaded(settings=settings, tls=tls, secret=_secret(settings, credentials_dir),
                  networks=tuple(ipaddress.ip_network(a) for a in settings.allowed_ips))


def _check_private(path: Path, key: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{key} {path}: no such file", hint="docs/api.md says how to turn the API on") from None
    except OSError as exc:
        raise ConfigError(f"{key} {path}: cannot read: {exc.strerror}") from None
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{key} {path} belongs to uid {st.st_uid}; it must be the agent's own (root)",
                          hint=f"chown root: {path}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{key} {path} may be read by others (mode {stat.S_IMODE(st.st_mode):04o})",
                          hint=f"chmod 600 {path}")


def _secret(settings: Settings, credentials_dir: str | None) -> bytes:
    if settings.secret_credential:
        if not credentials_dir:
            raise ConfigError(f"api.secret_credential {settings.secret_credential!r}: the agent was given no "
                              "credentials ($CREDENTIALS_DIRECTORY is not set)",
                              hint=f"systemctl edit bloom-agent: [Service] LoadCredential={settings.secret_credential}:"
                                   "/path/to/secret, then restart the agent")
        path, key = Path(credentials_dir) / settings.secret_credential, "api.secret_credential"
    else:
        path, key = Path(settings.secret_file), "api.secret_file"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                          hint="docs/api.md says how to make the secret") from None
    try:
        return signing.parse_secret(text, f"{key} {path}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class Failures:
    """Refused requests per address in the last minute: beyond the limit, an address gets 429 (its
    requests are not even read) and no more log lines until the minute is over."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_address: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, address: str) -> collections.deque[float]:
        times = self._by_address.get(address)
        if times is None:
            return collections.deque()
        while times and times[0] <= self._clock() - 60:
            times.popleft()
        if not times:
            del self._by_address[address]
        return times

    def wait(self, address: str, limit: int) -> float:
        """Seconds until ``address`` may be served again; 0 if now."""
        times = self._recent(address)
        return times[0] + 60 - self._clock() if len(times) >= limit else 0.0

    def add(self, address: str) -> int:
        """Count a refusal; return the count within the minute."""
        times = self._recent(address)
        times.append(self._clock())
        self._by_address[address] = times
        self._by_address.move_to_end(address)
        while len(self._by_address) > MAX_TRACKED_ADDRESSES:
            self._by_address.popitem(last=False)
        return len(times)


class Refused(Exception):
    """A request turned away before dispatch: the status, and the error that says why."""

    def __init__(self, status: int, error: BloomError, headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.status, self.error, self.headers = status, error, headers or {}
        self.head: http11.RequestHead | None = None  # when the refusal came after the headers were read


class ApiServer(Serving):
    def __init__(self, sock: socket.socket, dispatch: Dispatch, settings: Settings,
                 credentials_dir: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._sock = sock
        self._dispatch = dispatch
        self._credentials_dir = credentials_dir
        self.loaded = load(settings, credentials_dir)
        self._verifier = signing.Verifier(settings.clock_window_sec, clock)
        self.failures = Failures()
        self._crowded_logged_at = 0.0

    def configure(self, settings: Settings) -> None:
        """New settings (a reload): everything they name is read first, and nothing changes if any is wrong."""
        loaded = load(settings, self._credentials_dir)
        self._verifier.window = settings.clock_window_sec
        self.loaded = loaded

    @property
    def address(self) -> tuple:
        return self._sock.getsockname()

    async def start(self) -> None:
        self._sock.setblocking(False)
        self._server = await asyncio.start_server(self._handle, sock=self._sock, limit=http11.HEAD_LIMIT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        address = _address(writer.get_extra_info("peername"))
        loaded = self.loaded
        try:
            if len(self._active) >= loaded.settings.max_connections:
                # Before the handshake, which is the expensive part: a flood costs us an accept and a close.
                if time.monotonic() - self._crowded_logged_at > 60:
                    self._crowded_logged_at = time.monotonic()
                    log.warning("api: %d connections already; closing new ones (the latest from %s) ([api] "
                                "max_connections)", loaded.settings.max_connections, address)
                return
            self._active.add(task)
            await self._serve(reader, writer, address, loaded)
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("api: connection from %s ended: %s", address, exc or type(exc).__name__)
        finally:
            self._active.discard(task)
            writer.close()
            try:
                async with asyncio.timeout(loaded.settings.stall_timeout_sec):
                    await writer.wait_closed()
            except (ConnectionError, TimeoutError, ssl.SSLError):
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str,
                     loaded: Loaded) -> None:
        settings = loaded.settings
        # One deadline for the handshake and the headers together: a client trickling either holds a
        # connection no longer than header_timeout_sec.
        deadline = asyncio.get_running_loop().time() + settings.header_timeout_sec
        try:
            async with asyncio.timeout_at(deadline):
                await writer.start_tls(loaded.tls)
        except TimeoutError:
            self._note_failure(address, "no TLS handshake within "
                               f"{settings.header_timeout_sec:g} s ([api] header_timeout_sec)")
            return
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self._note_failure(address, f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return
        head = None
        try:
            head = await self._authenticate(reader, address, loaded, deadline)
            await self._answer(reader, writer, address, loaded, head)
        except Refused as refused:
            _respond(writer, refused.status, protocol.error(refused.error), refused.headers)
            head = head or refused.head or await _head_if_sent(reader)
            if refused.status != 429:  # counting the refusals of a waiting address would make its wait endless
                self._note_failure(address, f"{refused.status} {refused.error.message}", head.target if head else "")
            await self._finish(reader, writer, settings, head)

    async def _authenticate(self, reader: asyncio.StreamReader, address: str, loaded: Loaded,
                            deadline: float) -> http11.RequestHead:
        head = await self._read_head(reader, address, loaded, deadline)
        try:
            self._check(head, loaded)
        except Refused as refused:
            refused.head = head
            raise
        return head

    async def _read_head(self, reader: asyncio.StreamReader, address: str, loaded: Loaded,
                         deadline: float) -> http11.RequestHead:
        settings = loaded.settings
        if not loaded.allows(address):
            raise Refused(403, AddressRefused(f"address {address} may not use this API ([api] allowed_ips)",
                                              hint="add it, or a range holding it, to allowed_ips in "
                                                   "/etc/bloom/agent.toml on the host, then: bloomctl reload"))
        wait = self.failures.wait(address, settings.failures_per_minute)
        if wait:
            raise Refused(429, RateLimited(f"too many refused requests from {address}; try again in {wait:.0f} s"),
                          {"Retry-After": str(int(wait) + 1)})
        try:
            async with asyncio.timeout_at(deadline):
                raw = await reader.readuntil(b"\r\n\r\n")
            head = http11.parse_request_head(raw)
        except TimeoutError:
            raise Refused(408, ProtocolError(f"no complete request headers within {settings.header_timeout_sec:g} s"))
        except asyncio.LimitOverrunError:
            raise Refused(431, RequestTooLarge(f"request headers larger than {http11.HEAD_LIMIT} bytes")) from None
        except asyncio.IncompleteReadError:
            raise Refused(400, ProtocolError("the connection closed before the end of the request headers")) from None
        except http11.HttpError as exc:
            raise Refused(exc.status, ProtocolError(exc.message)) from None
        return head

    def _check(self, head: http11.RequestHead, loaded: Loaded) -> None:
        settings = loaded.settings
        if head.method != "POST":
            raise Refused(405, ProtocolError(f"{head.method} is not used here: every command is a POST"),
                          {"Allow": "POST"})
        if head.content_length > settings.max_request_bytes:
            raise Refused(413, RequestTooLarge(f"request body of {head.content_length} bytes; at most "
                                               f"{settings.max_request_bytes} ([api] max_request_bytes)"))
        try:
            self._verifier.check(loaded.secret, head.method, head.target, head.headers)
        except Unauthorized as err:
            raise Refused(401, err, {"WWW-Authenticate": signing.SCHEME}) from None
        except RateLimited as err:
            raise Refused(429, err) from None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str,
                      loaded: Loaded, head: http11.RequestHead) -> None:
        settings = loaded.settings
        digest = head.headers[signing.DIGEST_HEADER.lower()].lower()
        try:
            request = _request(head)
        except ProtocolError as err:
            raise Refused(STATUS.get(err.code, 400), err) from None
        if head.content_length == 0 and not hmac.compare_digest(digest, signing.EMPTY_BODY_SHA256):
            raise Refused(401, Unauthorized(f"the body is empty, but {signing.DIGEST_HEADER} is not the SHA-256 of "
                                            "nothing"))
        caller = Caller.api_client(address)
        log.info("api: %s from %s", request.command, address)
        upload = Body(reader, writer, head, digest, settings.stall_timeout_sec) if head.content_length else None
        answer = Answer(writer)
        try:
            result = await self._dispatch(caller, request, answer.progress, upload)
            answer.final(protocol.ok(result), 200)
        except BloomError as err:
            answer.final(protocol.error(err), STATUS.get(err.code, 500))
        except Exception as exc:  # a bug must not take the agent down, and the caller deserves an answer
            log.exception("api request from %s failed", address)
            answer.final(protocol.error(BloomError(f"internal error in bloom-agent: {exc!r}",
                                                   hint="see: journalctl -u bloom-agent")), 500)
        await self._finish(reader, writer, settings, head, upload)

    async def _finish(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, settings: Settings,
                      head: http11.RequestHead | None, upload: "Body | None" = None) -> None:
        async with asyncio.timeout(settings.stall_timeout_sec):
            await writer.drain()
        unread = (head.content_length if head is not None else 0) - (upload.received if upload else 0)
        if head is not None and unread and not (head.expects_continue and not (upload and upload.continued)):
            # The client is sending a body nobody will read: take some of it so it reads the answer
            # instead of a reset; a client that waits for 100 Continue sends nothing more.
            try:
                async with asyncio.timeout(LINGER_SEC):
                    while unread > 0 and (data := await reader.read(min(READ_BYTES, unread, LINGER_BYTES))):
                        unread -= len(data)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                pass

    def _note_failure(self, address: str, reason: str, target: str = "") -> None:
        count = self.failures.add(address)
        limit = self.loaded.settings.failures_per_minute
        where = f" {target[:200]}" if target else ""
        if count < limit:
            log.warning("api: refused %s%s: %s", address, where, reason)
        elif count == limit:
            log.warning("api: refused %s%s: %s; %d refusals within a minute: its requests get 429, without a "
                        "line here, until the minute is over", address, where, reason, count)


def _address(peer: Any) -> str:
    """The peer's IP address; an IPv4 client of a dual-stack socket as plain IPv4."""
    ip = ipaddress.ip_address(peer[0].split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _request(head: http11.RequestHead) -> protocol.Request:
    path, _, query = head.target.partition("?")
    command = path[len(PREFIX):] if path.startswith(PREFIX) else ""
    if not command or not all(c.isalnum() or c == "-" for c in command):
        raise UnknownCommand(f"no such path {path[:200]!r}; commands are POST {PREFIX}COMMAND?ARG=VALUE&...")
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=32,
                                       errors="strict")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"cannot read the query {query[:200]!r}: {exc}",
                            hint="arguments go as NAME=VALUE pairs joined by &, percent-encoded") from None
    args = protocol.TextArgs()
    for name, value in pairs:
        if name in args:
            raise ProtocolError(f"argument {name!r} is given twice")
        args[name] = value
    return protocol.Request(command=command, args=args, upload=head.content_length > 0)


async def _head_if_sent(reader: asyncio.StreamReader) -> http11.RequestHead | None:
    """The headers of a request refused before they were read, if they come at once: read, so that closing
    with them unread does not reset the connection under the answer, and parsed, for the body's length."""
    try:
        async with asyncio.timeout(1):
            return http11.parse_request_head(await reader.readuntil(b"\r\n\r\n"))
    except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, http11.HttpError, ConnectionError,
            ssl.SSLError):
        return None


def _respond(writer: asyncio.StreamWriter, status: int, line: bytes, headers: dict[str, str]) -> None:
    writer.write(http11.response_head(status, {"Content-Type": "application/x-ndjson", "Content-Length": str(len(line)),
                                               "Connection": "close", **headers}) + line)


class Answer:
    """The control protocol's answer lines as an HTTP response. The head waits for the first line: an
    answer that is one error line gets the error's status, a streamed one (progress first) gets 200 and
    its last line tells how it ended."""

    HEADERS = {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked", "Connection": "close",
               "Cache-Control": "no-store"}

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._started = False

    def progress(self, payload: dict) -> None:
        self._send(protocol.progress(payload), 200)

    def final(self, line: bytes, status: int) -> None:
        self._send(line, status)
        if not self._writer.is_closing():
            self._writer.write(http11.LAST_CHUNK)

    def _send(self, line: bytes, status: int) -> None:
        if self._writer.is_closing():
            return
        if not self._started:
            self._started = True
            self._writer.write(http11.response_head(status, self.HEADERS))
        self._writer.write(http11.chunk(line))


class Body:
    """The request body, the release tarball, as the command reads it (``Upload.copy_to``): spooled and
    hashed by the agent as over the control socket, and checked against the digest the client signed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: http11.RequestHead,
                 digest: str, stall: float) -> None:
        self._reader, self._writer, self._head = reader, writer, head
        self._digest, self._stall = digest, stall
        self.received = 0
        self.continued = False

    async def copy_to(self, write: Callable[[bytes], None], limit: int) -> int:
        if self.continued:
            raise ProtocolError("the upload was already read")
        length = self._head.content_length
        if length > limit:
            raise RequestTooLarge(f"upload of {length} bytes, larger than {limit} (the app's max_release_bytes)",
                                  hint="raise max_release_bytes in the app file if this size is expected")
        self.continued = True
        if self._head.expects_continue:
            self._writer.write(http11.CONTINUE)
        digest = hashlib.sha256()
        while self.received < length:
            try:
                async with asyncio.timeout(self._stall):
                    data = await self._reader.read(min(READ_BYTES, length - self.received))
            except TimeoutError:
                raise ProtocolError(f"the upload stalled: nothing for {self._stall:g} s after {self.received} bytes",
                                    hint="nothing was installed; send it again") from None
            if not data:
                raise ProtocolError(f"the upload ended after {self.received} of {length} bytes: the connection closed",
                                    hint="nothing was installed; send it again")
            self.received += len(data)
            digest.update(data)
            write(data)
        if not hmac.compare_digest(digest.hexdigest(), self._digest):
            raise Unauthorized(f"the body does not match its signed {signing.DIGEST_HEADER}",
                               hint="nothing was installed; sign the SHA-256 of the bytes sent")
        return length
