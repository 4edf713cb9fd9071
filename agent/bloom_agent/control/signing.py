"""Signed requests of the HTTPS API (docs/api.md): the string a client signs, and the server's checks.

A client signs, with HMAC-SHA256 and the shared secret, these six lines joined by "\\n" (no final newline):

    BLOOM-HMAC-SHA256
    METHOD                  e.g. POST
    TARGET                  the path and query exactly as in the request line, e.g. /v1/status?app=web
    TIMESTAMP               Unix time in seconds, as in the Bloom-Timestamp header
    NONCE                   as in the Bloom-Nonce header: 16 to 128 of A-Z a-z 0-9 _ -
    BODY_SHA256             hex SHA-256 of the body, as in the Bloom-Content-SHA256 header

and sends ``Authorization: BLOOM-HMAC-SHA256 <hex signature>``. The body's digest travels in a header so
the signature can be checked before the body is read; the body is then checked against it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import time
from typing import Callable, Mapping

from bloom_agent.errors import RateLimited, Unauthorized

SCHEME = "BLOOM-HMAC-SHA256"
TIMESTAMP_HEADER = "Bloom-Timestamp"
NONCE_HEADER = "Bloom-Nonce"
DIGEST_HEADER = "Bloom-Content-SHA256"
AUTHORIZATION_HEADER = "Authorization"
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()

NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
TIMESTAMP = re.compile(r"[0-9]{1,12}")
# The shortest secret accepted: 32 characters, e.g. 128 bits as hex.
MIN_SECRET_CHARS = 32
# Nonces remembered at once. Only signed requests add one, so only a holder of the secret can fill it.
MAX_NONCES = 100_000
DOCS = "see /usr/share/doc/bloom-agent/docs/api.md"


def string_to_sign(method: str, target: str, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    return "\n".join((SCHEME, method, target, timestamp, nonce, body_sha256.lower())).encode()


def signature(secret: bytes, method: str, target: str, timestamp: str, nonce: str, body_sha256: str) -> str:
    return hmac.new(secret, string_to_sign(method, target, timestamp, nonce, body_sha256), hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, target: str, body_sha256: str, now: float | None = None) -> dict[str, str]:
    """The headers that authenticate one request (a fresh nonce each time)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        DIGEST_HEADER: body_sha256,
        AUTHORIZATION_HEADER: f"{SCHEME} {signature(secret, method, target, timestamp, nonce, body_sha256)}",
    }


def parse_secret(text: str, where: str) -> bytes:
    """The secret as a file holds it: one line of printable characters, at least MIN_SECRET_CHARS long. The
    final newline is not part of it, so ``openssl dgst -hmac "$(cat FILE)"`` signs with the same key."""
    secret = text.rstrip("\n")
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"{where}: the secret is {len(secret)} characters long; at least {MIN_SECRET_CHARS} are needed "
                         f"(make one with: openssl rand -hex 32 > FILE)")
    if not all(c.isascii() and c.isprintable() and not c.isspace() for c in secret):
        raise ValueError(f"{where}: the secret must be one line of printable ASCII without spaces "
                         f"(make one with: openssl rand -hex 32 > FILE)")
    return secret.encode()


class Verifier:
    """The server's checks of a request's signature, clock and nonce. A nonce is remembered until its
    timestamp leaves the clock window, after which the window refuses the request anyway; requests signed
    before this verifier was made are refused, so a restarted agent, which has forgotten the nonces, does
    not take a replay of a request its predecessor served."""

    def __init__(self, window: int, clock: Callable[[], float] = time.time, max_nonces: int = MAX_NONCES) -> None:
        self.window = window
        self._clock = clock
        self._started = int(clock())
        self._max_nonces = max_nonces
        self._seen: set[str] = set()
        self._expiry: list[tuple[int, str]] = []  # a heap of (timestamp + window, nonce)

    def check(self, secret: bytes, method: str, target: str, headers: Mapping[str, str]) -> str:
        """Refuse (Unauthorized) a request that is not signed right, now, once; return the body digest the
        signature vouches for. ``headers`` has lower-case names."""
        authorization = headers.get(AUTHORIZATION_HEADER.lower())
        if authorization is None:
            raise Unauthorized(f"missing signature: no {AUTHORIZATION_HEADER} header",
                               hint=f"sign every request with the API's shared secret; {DOCS}")
        scheme, _, given = authorization.partition(" ")
        if scheme != SCHEME or not HEX_DIGEST.fullmatch(given.strip()):
            raise Unauthorized(f"malformed {AUTHORIZATION_HEADER} header: expected '{SCHEME} <64 hex digits>'",
                               hint=DOCS)
        timestamp = self._header(headers, TIMESTAMP_HEADER, TIMESTAMP, "the Unix time in seconds")
        nonce = self._header(headers, NONCE_HEADER, NONCE, "16 to 128 characters of A-Z a-z 0-9 _ -")
        digest = self._header(headers, DIGEST_HEADER, HEX_DIGEST, "the hex SHA-256 of the body")
        expected = signature(secret, method, target, timestamp, nonce, digest)
        # Constant time: how much of a guess matched must not show in how long the answer took.
        if not hmac.compare_digest(expected, given.strip().lower()):
            raise Unauthorized("wrong signature",
                               hint="check the secret, and sign exactly: BLOOM-HMAC-SHA256, the method, the path "
                                    f"with its query as sent, the timestamp, the nonce and the body's SHA-256; {DOCS}")
        now = self._clock()
        self._forget(now)
        skew = int(timestamp) - now
        if abs(skew) > self.window:
            way = "ahead of" if skew > 0 else "behind"
            raise Unauthorized(f"expired or future request: its timestamp is {abs(skew):.0f} s {way} the host's clock; "
                               f"at most {self.window} s is accepted ([api] clock_window_sec)",
                               hint="sign each request as it is sent, and keep the clocks in sync (NTP)")
        if int(timestamp) < self._started:
            raise Unauthorized("request signed before the agent started: it may have been served already",
                               hint="sign it again and resend it")
        self._remember(nonce, int(timestamp))
        return digest.lower()

    @staticmethod
    def _header(headers: Mapping[str, str], name: str, syntax: re.Pattern, what: str) -> str:
        value = headers.get(name.lower())
        if value is None:
            raise Unauthorized(f"missing {name} header", hint=f"it is part of the signature; {DOCS}")
        if not syntax.fullmatch(value):
            raise Unauthorized(f"malformed {name} header: must be {what}", hint=DOCS)
        return value

    def _forget(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])

    def _remember(self, nonce: str, timestamp: int) -> None:
        if nonce in self._seen:
            raise Unauthorized(f"replayed request: nonce {nonce} was used already",
                               hint="every request needs a new random nonce (openssl rand -hex 16)")
        if len(self._seen) >= self._max_nonces:
            raise RateLimited(f"more than {self._max_nonces} requests within the clock window", hint="slow down")
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (timestamp + self.window, nonce))
