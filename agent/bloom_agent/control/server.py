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

Dispatch = Callable[[Caller, protocol.Request, Callable[[dict], None]], Awaitable[Any]]


class ControlServer:
    def __init__(self, sock: socket.socket, dispatch: Dispatch, *, control_gid: Callable[[], int | None],
                 max_request_bytes: int, proc: Path = Path("/proc")) -> None:
        self._sock = sock
        self._proc = proc
        self._dispatch = dispatch
        self._control_gid = control_gid
        self._max_request_bytes = max_request_bytes
        self._server: asyncio.AbstractServer | None = None
        self._active: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._sock.setblocking(False)
        self._server = await asyncio.start_unix_server(
            self._handle, sock=self._sock, limit=self._max_request_bytes + 1
        )

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._active.add(task)
        try:
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

            result = await self._dispatch(caller, request, progress)
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
