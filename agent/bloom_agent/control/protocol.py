"""The control protocol: newline-delimited JSON over a Unix stream socket, versioned.

A client sends one request line ``{"v": 1, "command": ..., "args": {...}}``. The agent answers with
zero or more progress lines ``{"v": 1, "progress": {...}}`` and one final line, either
``{"v": 1, "ok": true, "result": ...}`` or ``{"v": 1, "ok": false, "error": {code, message, hint}}``.

A request with ``"upload": true`` (install, deploy) is followed by the file, the release tarball, in
chunks: an 8-byte big-endian length, then that many bytes; a length of 0 ends it. The file travels
with the request, read by the client as the caller, so the agent never opens a path on anyone's
behalf, and a tarball can come from a pipe (``bloomctl deploy web -``, over ssh).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from bloom_agent.errors import BloomError, ProtocolError, from_wire

VERSION = 1


CHUNK_HEADER = struct.Struct(">Q")
CHUNK_BYTES = 1024 * 1024


class TextArgs(dict):
    """Arguments that came as text (the HTTPS API's query string, ``?app=web&wait=false``): a command
    reads an integer or a boolean from them by the type it declares for that argument."""


@dataclass(frozen=True)
class Request:
    command: str
    args: dict[str, Any] = field(default_factory=dict)
    upload: bool = False  # a file follows the request line, in chunks


def encode(message: dict) -> bytes:
    return json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode() + b"\n"


def encode_request(command: str, args: dict[str, Any] | None = None, upload: bool = False) -> bytes:
    return encode({"command": command, "args": args or {}, **({"upload": True} if upload else {})})


def encode_chunk(data: bytes) -> bytes:
    """One chunk of an upload; ``b""`` is the end."""
    return CHUNK_HEADER.pack(len(data)) + data


def decode_request(line: bytes) -> Request:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ProtocolError("request is nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("request must be a JSON object")
    if message.get("v") != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {message.get('v')!r}; this agent speaks version {VERSION}",
            hint="use the bloomctl that came with this bloom-agent",
        )
    command, args = message.get("command"), message.get("args", {})
    if not isinstance(command, str) or not command:
        raise ProtocolError("request has no 'command'")
    if not isinstance(args, dict):
        raise ProtocolError("request 'args' must be a JSON object")
    upload = message.get("upload", False)
    if not isinstance(upload, bool):
        raise ProtocolError("request 'upload' must be true or false")
    return Request(command=command, args=args, upload=upload)


def ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def error(err: BloomError) -> bytes:
    return encode({"ok": False, "error": err.to_wire()})


def progress(payload: dict) -> bytes:
    return encode({"progress": payload})


def decode_response(line: bytes) -> dict:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"agent sent an invalid response: {exc}") from exc
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise ProtocolError("agent answered with an unknown protocol version; bloomctl and bloom-agent differ")
    return message


NO_ANSWER = object()


def read_answer(lines: Iterable[bytes], on_progress: Callable[[dict], None] | None) -> Any:
    """The result of an answer's final line, or its error raised as the agent's type; progress lines go to
    ``on_progress``. NO_ANSWER when the lines end before a final one."""
    for line in lines:
        message = decode_response(line)
        if "progress" in message:
            if on_progress is not None:
                on_progress(message["progress"])
            continue
        if message.get("ok"):
            return message.get("result")
        raise from_wire(message.get("error") or {})
    return NO_ANSWER
