"""Just enough HTTP/1.1 for the API, strictly: one request per connection, a body only with
Content-Length, headers in ASCII with no folding and no repeats. Anything else is refused with a
status and a reason rather than guessed at (two parsers that read one message differently are how
requests get smuggled past a check)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from bloom_agent.errors import ProtocolError

# The request line and headers together; a client that needs more is not one of ours.
HEAD_LIMIT = 16 * 1024
MAX_HEADERS = 64

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 422: "Unprocessable Content", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(r"/[!-~]*")  # origin-form: a path, printable ASCII, no spaces
_VALUE = re.compile(r"[\t -~]*")


class HttpError(Exception):
    """A request that cannot be read as HTTP/1.1 the way this server speaks it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0"))

    @property
    def expects_continue(self) -> bool:
        return self.headers.get("expect", "").lower() == "100-continue"


def parse_request_head(data: bytes) -> RequestHead:
    """The request line and headers, ending in the empty line."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "the request line and headers must be ASCII") from None
    lines = text.split("\r\n")
    if lines[-2:] != ["", ""]:
        raise HttpError(400, "the headers must end with an empty line, every line with CRLF")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise HttpError(400, f"not an HTTP request line: {lines[0][:100]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"{version[:20]!r} is not spoken here; send HTTP/1.1")
    if not _TARGET.fullmatch(target):
        raise HttpError(400, "the request target must be a path (/v1/COMMAND?QUERY) in printable ASCII")
    headers: dict[str, str] = {}
    for line in lines[1:-2]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, f"malformed header line {line[:100]!r}" if not line[:1].isspace()
                            else "folded header lines are not accepted")
        value = value.strip(" \t")
        if not _VALUE.fullmatch(value):
            raise HttpError(400, f"header {name} has a control character")
        key = name.lower()
        if key in headers:
            raise HttpError(400, f"header {name} is given twice")
        headers[key] = value
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, f"more than {MAX_HEADERS} headers")
    if "transfer-encoding" in headers:
        raise HttpError(411, "a body must come with Content-Length, not Transfer-Encoding")
    if not re.fullmatch(r"[0-9]{1,15}", headers.get("content-length", "0")):
        raise HttpError(400, "Content-Length must be a number of bytes")
    return RequestHead(method, target, headers)


def response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


CONTINUE = response_head(100, {})
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


# -- the client's side ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: dict[str, str]


def read_response_head(stream: BinaryIO) -> ResponseHead:
    line = stream.readline(HEAD_LIMIT)
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {line[:100]!r}" if line else
                            "the connection closed without an answer", hint="see: journalctl -u bloom-agent there")
    headers = {}
    while (line := stream.readline(HEAD_LIMIT)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return ResponseHead(int(parts[1]), headers)


def body_lines(stream: BinaryIO, head: ResponseHead) -> Iterator[bytes]:
    """The response body, line by line, whichever way it is framed."""
    if head.headers.get("transfer-encoding", "").lower() == "chunked":
        data = _dechunked(stream)
    elif "content-length" in head.headers:
        data = iter([stream.read(int(head.headers["content-length"]))])
    else:
        data = iter(lambda: stream.read(65536), b"")
    pending = b""
    for piece in data:
        pending += piece
        *lines, pending = pending.split(b"\n")
        yield from (line + b"\n" for line in lines)
    if pending:
        yield pending


def _dechunked(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        size_line = stream.readline(1024)
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            return  # cut short: the caller sees no final line and says so
        if size == 0:
            return
        data = stream.read(size)
        stream.read(2)
        if len(data) < size:
            return
        yield data
