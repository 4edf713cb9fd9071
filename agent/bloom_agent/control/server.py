"""Serve control requests: identify the caller, authorize, decode, dispatch, answer."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

from bloom_agent.control import protocol
from bloom_agent.control.auth import Caller, is_authorized, peer_caller
from bloom_agent.errors import BloomError, PermissionDenied, ProtocolError, RequestTooLarge, UnknownCommand

log = logging.getLogger(__name__)

# A client that connects and sends nothing must not hold a connection open for ever.
REQUEST_READ_TIMEOUT = 10.0
# Nor one that stops sending in the middle of an upload.
UPLOAD_STALL_TIMEOUT = 60.0
# Connections served at once; beyond, a client is told so at once, and the agent's descriptors last.
MAX_CONNECTIONS = 64

Dispatch = Callable[[Caller, protocol.Request, Callable[[dict], None], "StreamUpload | None"], Awaitable[Any]]


class StreamUpload:
    """The file that follows a request line, read chunk by chunk as the agent consumes it."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.consumed = False

    async def copy_to(self, write: Callable[[bytes], None], limit: int) -> int:
        """Pass every chunk to ``write``; return the size. Refuses more than ``limit`` bytes."""
        if self.consumed:
            raise ProtocolError("the upload was already read")
        self.consumed = True
        total = 0
        while True:
            try:
                async with asyncio.timeout(UPLOAD_STALL_TIMEOUT):
                    size = protocol.CHUNK_HEADER.unpack(await self._reader.readexactly(protocol.CHUNK_HEADER.size))[0]
                    if size > protocol.CHUNK_BYTES:
                        raise ProtocolError(f"upload chunk of {size} bytes; at most {protocol.CHUNK_BYTES}")
                    data = await self._reader.readexactly(size) if size else b""
            except asyncio.IncompleteReadError:
                raise ProtocolError(f"the upload ended after {total} bytes: the connection closed before its end",
                                    hint="nothing was installed; send it again") from None
            except TimeoutError:
                raise ProtocolError(f"the upload stalled: nothing for {UPLOAD_STALL_TIMEOUT:.0f} s after {total} bytes",
                                    hint="nothing was installed; send it again") from None
            if not data:
                return total
            total += len(data)
            if total > limit:
                raise RequestTooLarge(f"upload larger than {limit} bytes (the app's max_release_bytes)",
                                      hint="raise max_release_bytes in the app file if this size is expected")
            write(data)


class Serving:
    """A server on a listening socket, and the requests in flight on it."""

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._active: set[asyncio.Task] = set()

    async def close(self, grace: float) -> None:
        """Stop accepting, give in-flight requests up to ``grace`` seconds, then cancel them."""
        if self._server is not None:
            # Closing our copy of an inherited socket leaves systemd's open: connections queued on
            # it wait for the next agent instead of being refused.
            self._server.close()
        if self._active:
            _, pending = await asyncio.wait(self._active, timeout=grace)
            for task in pending:
                task.cancel()


class ControlServer(Serving):
    def __init__(self, sock: socket.socket, dispatch: Dispatch, *, control_gid: Callable[[], int | None],
                 max_request_bytes: int, proc: Path = Path("/proc")) -> None:
        super().__init__()
        self._sock = sock
        self._proc = proc
        self._dispatch = dispatch
        self._control_gid = control_gid
        self._max_request_bytes = max_request_bytes

    async def start(self) -> None:
        self._sock.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._handle, sock=self._sock, limit=self._max_request_bytes + 1
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        crowded = len(self._active) >= MAX_CONNECTIONS
        self._active.add(task)
        try:
            if crowded:
                writer.write(protocol.error(BloomError(f"the agent is serving {MAX_CONNECTIONS} connections already",
                                                       hint="try again in a moment")))
                await writer.drain()
                return
            await self._serve_one(reader, writer)
        finally:
            self._active.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, BrokenPipeError):
                pass

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = peer_caller(writer.get_extra_info("socket"), self._proc)
        try:
            if not is_authorized(caller, self._control_gid()):
                log.warning("permission denied: %s is neither root nor in the control group", caller.describe())
                raise PermissionDenied(
                    f"permission denied: {caller.user} may not control bloom-agent",
                    hint="run as root, or add the user to the 'bloom' group (usermod -aG bloom USER) and log in again",
                )
            request = protocol.decode_request(await self._read_request(reader))
            log.debug("%s: %s %s", caller.describe(), request.command, request.args)
            def progress(payload: dict) -> None:
                if not writer.is_closing():
                    writer.write(protocol.progress(payload))

            upload = StreamUpload(reader) if request.upload else None
            result = await self._dispatch(caller, request, progress, upload)
            writer.write(protocol.ok(result))
        except BloomError as err:
            writer.write(protocol.error(err))
        except Exception as exc:  # a bug must not take the agent down, and the caller deserves an answer
            log.exception("control request from %s failed", caller.describe())
            writer.write(protocol.error(BloomError(f"internal error in bloom-agent: {exc!r}",
                                                   hint="see: journalctl -u bloom-agent")))
        try:
            await writer.drain()
        except (ConnectionError, BrokenPipeError):
            log.info("%s went away before the answer", caller.describe())

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes:
        limit = self._max_request_bytes
        try:
            async with asyncio.timeout(REQUEST_READ_TIMEOUT):
                line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise RequestTooLarge(f"request larger than {limit} bytes (agent.max_request_bytes)") from None
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed before a complete request line") from exc
        except asyncio.TimeoutError:
            raise ProtocolError(f"no request within {REQUEST_READ_TIMEOUT:.0f} s") from None
        return line


def unknown_command(name: str, known: list[str]) -> UnknownCommand:
    return UnknownCommand(f"unknown command {name!r}", hint="this agent knows: " + ", ".join(sorted(known)))
