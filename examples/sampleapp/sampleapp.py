#!/usr/bin/python3
"""sampleapp: a small HTTP/1.1 app for bloom-agent's demo, tests and benchmark.

It is socket-activated like any release managed by bloom-agent: the listening
socket(s) come from systemd (LISTEN_FDS, from fd 3), so several versions can
run side by side on the same socket.  It tells systemd when it is ready
(READY=1), pings the watchdog, and drains gracefully on SIGTERM.  A release can
misbehave on purpose through ``faults.json`` in its release directory.

Standard library only (Python 3.11).  Exit codes: 0 clean stop, 1 crash
(fault ``crash_after_sec``; ``crash_exit_code`` chooses another), 2 failed to boot (bad faults.json, no VERSION,
no sockets).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BOOT_FAILED = 2

SD_LISTEN_FDS_START = 3
POLL_INTERVAL = 0.1          # how often a waiting connection looks at the drain flag
DRAIN_IDLE_CLOSE = 0.5       # while draining, close connections idle for longer than this
LINGER_TIMEOUT = 1.0         # after our last response, wait this long for the client's FIN
SEND_TIMEOUT = 10.0          # give up on a client that does not read its response
MAX_HEADER_BYTES = 64 * 1024
MAX_SLOW_MS = 120_000


class BootError(Exception):
    """The app cannot start; the message says why.  Exit code 2."""


# --------------------------------------------------------------------------- logging

_log_lock = threading.Lock()


def log(priority: int, message: str) -> None:
    """One line on stderr with a syslog priority prefix journald understands (<3> err ...)."""
    line = f"<{priority}>{message}\n"
    with _log_lock:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def log_err(message: str) -> None:
    log(3, message)


def log_warning(message: str) -> None:
    log(4, message)


def log_info(message: str) -> None:
    log(6, message)


# --------------------------------------------------------------------------- faults

NUMBER = "number"
BOOL = "bool"
FAULT_KEYS = {
    "startup_delay_sec": NUMBER,
    "never_ready": BOOL,
    "crash_after_sec": NUMBER,
    "crash_exit_code": NUMBER,
    "stop_watchdog_after_sec": NUMBER,
    "error_log_per_sec": NUMBER,
    "warn_log_per_sec": NUMBER,
    "slow_response_ms": NUMBER,
    "slow_first_request_ms": NUMBER,
    "fail_health": BOOL,
    "exit_on_sigterm_without_drain": BOOL,
}


def validate_faults(faults: object) -> dict:
    """Return the faults dict, or raise BootError naming every bad key."""
    if not isinstance(faults, dict):
        raise BootError("faults.json must hold a JSON object")
    problems = []
    for key, value in faults.items():
        kind = FAULT_KEYS.get(key)
        if kind is None:
            problems.append(f"unknown key {key!r} (known: {', '.join(sorted(FAULT_KEYS))})")
        elif kind == BOOL and not isinstance(value, bool):
            problems.append(f"{key} must be true or false, not {value!r}")
        elif kind == NUMBER and (isinstance(value, bool) or not isinstance(value, (int, float))
                                 or value < 0):
            problems.append(f"{key} must be a number >= 0, not {value!r}")
    if problems:
        raise BootError("faults.json: " + "; ".join(problems))
    return dict(faults)


def load_faults(release_dir: Path) -> dict:
    path = release_dir / "faults.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BootError(f"cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BootError(f"{path} is not valid JSON: {exc}") from exc
    return validate_faults(data)


def load_version(release_dir: Path) -> str:
    path = release_dir / "VERSION"
    try:
        version = path.read_text().strip()
    except OSError as exc:
        raise BootError(f"cannot read {path}: {exc}") from exc
    if not version or any(c.isspace() or not c.isprintable() for c in version):
        raise BootError(f"{path} must hold one version string, not {version!r}")
    return version


# --------------------------------------------------------------------------- systemd

class Notifier:
    """sd_notify(3) by hand: datagrams to $NOTIFY_SOCKET; a no-op without it."""

    def __init__(self, address: str | None):
        self.address = None
        self.sock = None
        if address:
            if address.startswith("@"):
                address = "\0" + address[1:]
            elif not address.startswith("/"):
                log_warning(f"ignoring NOTIFY_SOCKET={address!r}: not a path or @abstract name")
                return
            self.address = address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, *fields: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as exc:
            log_warning(f"sd_notify {fields!r} failed: {exc}")
            return False


def watchdog_interval(env) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1e6


def inherited_sockets(env) -> list[socket.socket]:
    """The listening sockets passed by systemd (sd_listen_fds(3)); [] when there are none.

    LISTEN_PID must match our pid when set; being lenient when it is absent helps tests.
    Only listening stream sockets (TCP or Unix) are accepted; anything else is a boot error.
    """
    count = env.get("LISTEN_FDS")
    if not count:
        return []
    pid = env.get("LISTEN_PID")
    if pid and pid != str(os.getpid()):
        return []
    try:
        count = int(count)
    except ValueError as exc:
        raise BootError(f"LISTEN_FDS={count!r} is not a number") from exc
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BootError(f"inherited fd {fd} is not a socket: {exc}") from exc
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise BootError(f"inherited fd {fd}: unsupported address family {sock.family!r}")
        if sock.type != socket.SOCK_STREAM:
            raise BootError(f"inherited fd {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise BootError(f"inherited fd {fd} is not listening")
        os.set_inheritable(fd, False)
        sockets.append(sock)
    return sockets


def listen_on(spec: str) -> socket.socket:
    """--listen HOST:PORT, [V6]:PORT or unix:/path, for development without systemd."""
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(path)
    else:
        host, sep, port = spec.rpartition(":")
        if not sep or not port.isdigit():
            raise BootError(f"--listen {spec!r}: expected HOST:PORT or unix:/path")
        host = host.strip("[]") or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(1024)
    return sock


def describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd {sock.fileno()}"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return f"unix:{name!r}" if isinstance(name, bytes) else f"unix:{name}"


# --------------------------------------------------------------------------- HTTP

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           411: "Length Required", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented"}


class Request:
    __slots__ = ("method", "target", "version", "headers", "keep_alive")

    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            self.keep_alive = "close" not in connection
        else:
            self.keep_alive = "keep-alive" in connection


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_head(head: bytes) -> Request:
    """Parse the request line and headers (everything before the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest(400, "undecodable request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


# --------------------------------------------------------------------------- the app

class SampleApp:
    def __init__(self, version: str, faults: dict, listeners: list[socket.socket],
                 notifier: Notifier, *, drain_timeout: float = 20.0,
                 keepalive_timeout: float = 75.0, access_log: bool = False,
                 watchdog: float | None = None):
        self.version = version
        self.faults = faults
        self.listeners = listeners
        self.notifier = notifier
        self.drain_timeout = drain_timeout
        self.keepalive_timeout = keepalive_timeout
        self.access_log = access_log
        self.watchdog = watchdog

        self.draining = False
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        self.first_request_lock = threading.Lock()
        self.first_request_seen = False
        self.signals: collections.deque[int] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.served = 0                      # approximate (no lock): for the final log line

        body = f"sampleapp {version}\n".encode()
        self.root_responses = {keep: self.build_response(200, body, keep)
                               for keep in (True, False)}
        health = (500, b"fail\n") if faults.get("fail_health") else (200, b"ok\n")
        self.health_responses = {keep: self.build_response(*health, keep)
                                 for keep in (True, False)}

    # ----------------------------------------------------------------- main loop

    def run(self) -> int:
        """The main thread: signals, accepting, timers.  Returns the exit code."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        self.install_signal_handlers()
        threading.Thread(target=self.watchdog_loop, name="watchdog", daemon=True).start()
        try:
            return self.main_loop(wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)

    def install_signal_handlers(self) -> None:
        if self.faults.get("exit_on_sigterm_without_drain"):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        else:
            signal.signal(signal.SIGTERM, self.queue_signal)
        signal.signal(signal.SIGINT, self.queue_signal)

    def queue_signal(self, signum, frame) -> None:
        """Signal handlers only queue; the main loop handles them."""
        self.signals.append(signum)

    def main_loop(self, wake_r: socket.socket) -> int:
        delay = float(self.faults.get("startup_delay_sec", 0))
        never_ready = bool(self.faults.get("never_ready"))
        serve_at = None if never_ready else self.started + delay
        drain_deadline = None
        self.notifier.send("STATUS=starting sampleapp " + self.version
                           + (" (fault: never_ready)" if never_ready else ""))
        if never_ready:
            log_warning("fault never_ready: this instance will never report READY=1 or serve")
        crash_after = self.faults.get("crash_after_sec")

        while True:
            now = time.monotonic()
            timeout = 1.0
            if drain_deadline is not None:
                timeout = POLL_INTERVAL
            elif self.ready_at is None and serve_at is not None:
                timeout = min(timeout, serve_at - now)
            elif crash_after is not None and (self.ready_at is not None or never_ready):
                reference = self.ready_at if self.ready_at is not None else self.started
                timeout = min(timeout, reference + crash_after - now)
            timeout = max(0.0, timeout)
            for key, _ in self.selector.select(timeout):
                if key.fileobj is wake_r:
                    try:
                        while wake_r.recv(512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.accept_all(key.fileobj)

            while self.signals:
                signum = self.signals.popleft()
                if drain_deadline is not None:
                    log_warning(f"second signal {signum} while draining: exiting now")
                    return EXIT_OK
                log_info(f"signal {signum}: draining (stop accepting, finish requests in flight)")
                drain_deadline = time.monotonic() + self.drain_timeout
                self.start_drain()

            now = time.monotonic()
            if drain_deadline is not None:
                with self.conns_lock:
                    left = len(self.conns)
                if left == 0:
                    log_info(f"drained: exiting ({self.served} requests served)")
                    return EXIT_OK
                if now >= drain_deadline:
                    log_warning(f"drain timeout ({self.drain_timeout:g} s) with {left} "
                                f"connection(s) still open: exiting anyway")
                    return EXIT_OK
                continue

            if self.ready_at is None and serve_at is not None and now >= serve_at:
                self.start_serving()

            reference = self.ready_at if self.ready_at is not None else self.started
            if crash_after is not None and (self.ready_at is not None or never_ready) \
                    and now >= reference + crash_after:
                code = int(self.faults.get("crash_exit_code", EXIT_CRASH))
                log_err(f"fault crash_after_sec={crash_after}: crashing with exit code {code}")
                return code

    def start_serving(self) -> None:
        for sock in self.listeners:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, "listener")
        self.ready_at = time.monotonic()
        where = ", ".join(describe(s) for s in self.listeners)
        log_info(f"sampleapp {self.version} serving on {where}")
        self.notifier.send("READY=1", f"STATUS=serving sampleapp {self.version}")
        for key, priority in (("error_log_per_sec", 3), ("warn_log_per_sec", 4)):
            rate = self.faults.get(key)
            if rate:
                threading.Thread(target=self.noise_loop, args=(key, priority, float(rate)),
                                 name=key, daemon=True).start()

    def start_drain(self) -> None:
        """Stop accepting at once; connection threads notice self.draining on their own.

        Our copies of the listening sockets are closed, never shut down: the socket is
        shared with systemd and the other instances, which keep accepting from it.
        """
        self.draining = True
        for sock in self.listeners:
            if self.ready_at is not None:
                try:
                    self.selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
            sock.close()
        with self.conns_lock:
            left = len(self.conns)
        self.notifier.send("STOPPING=1", f"STATUS=draining {left} connection(s)")

    def accept_all(self, listener: socket.socket) -> None:
        while not self.draining:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:      # e.g. EMFILE, ECONNABORTED: keep going
                log_warning(f"accept failed: {exc}")
                return
            with self.conns_lock:
                self.conns.add(conn)
            try:
                threading.Thread(target=self.connection_thread, args=(conn,),
                                 daemon=True).start()
            except RuntimeError as exc:
                log_err(f"cannot start a connection thread: {exc}")
                self.forget(conn)
                conn.close()

    def forget(self, conn: socket.socket) -> None:
        with self.conns_lock:
            self.conns.discard(conn)

    # ----------------------------------------------------------------- background threads

    def watchdog_loop(self) -> None:
        if self.watchdog is None:
            return
        stop_after = self.faults.get("stop_watchdog_after_sec")
        stopped = False
        while True:
            if stop_after is not None:
                reference = self.ready_at if self.ready_at is not None else self.started
                if time.monotonic() >= reference + stop_after and (
                        self.ready_at is not None or self.faults.get("never_ready")):
                    if not stopped:
                        log_warning(f"fault stop_watchdog_after_sec={stop_after}: "
                                    "no more WATCHDOG=1")
                        stopped = True
            if not stopped:
                self.notifier.send("WATCHDOG=1")
            time.sleep(self.watchdog)

    def noise_loop(self, key: str, priority: int, rate: float) -> None:
        label = "error" if priority == 3 else "warning"
        period = 1.0 / rate
        count = 0
        next_at = time.monotonic()
        while True:
            count += 1
            log(priority, f"sampleapp {self.version}: simulated {label} #{count} (fault {key})")
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    # ----------------------------------------------------------------- connections

    def connection_thread(self, conn: socket.socket) -> None:
        try:
            self.serve_connection(conn)
        except OSError:
            pass                                    # the client went away
        except Exception as exc:                    # a bug: log it, never kill the process
            log_err(f"connection handler failed: {exc!r}")
        finally:
            self.close_gracefully(conn)
            self.forget(conn)

    def recv_more(self, conn: socket.socket, buf: bytearray, idle_since: float) -> bool:
        """Read more bytes into buf.  False: stop serving this connection (EOF or timeout).

        With an empty buf the connection is idle between requests: it is closed after
        keepalive_timeout, or after DRAIN_IDLE_CLOSE once draining.  A partly received
        request is in flight: it is waited for (within the drain hard cap).
        """
        while True:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                idle = time.monotonic() - idle_since
                if not buf:
                    limit = DRAIN_IDLE_CLOSE if self.draining else self.keepalive_timeout
                    if idle >= limit and not self.data_waiting(conn):
                        return False
                elif idle >= self.keepalive_timeout:
                    return False
                continue
            if not chunk:
                return False
            buf += chunk
            return True

    @staticmethod
    def data_waiting(conn: socket.socket) -> bool:
        try:
            return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False

    def serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(POLL_INTERVAL)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        idle_since = time.monotonic()
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self.send(conn, self.build_response(431, b"headers too large\n", False))
                    return
                if not self.recv_more(conn, buf, idle_since):
                    return
                end = buf.find(b"\r\n\r\n")
            try:
                request = parse_head(bytes(buf[:end]))
                length = self.body_length(request)
            except BadRequest as exc:
                self.send(conn, self.build_response(exc.status, f"{exc}\n".encode(), False))
                return
            needed = end + 4 + length
            while len(buf) < needed:
                if not self.recv_more(conn, buf, idle_since):
                    return
            del buf[:needed]                        # the body is read and ignored

            # Once draining, this is the last request answered on this connection.
            keep_alive = request.keep_alive and not self.draining
            response = self.respond(request, keep_alive)
            keep_alive = keep_alive and not self.draining
            if not keep_alive and response.find(b"\r\nConnection: close\r\n") < 0:
                # Drain began while this request was being handled: say so in the answer.
                response = response.replace(b"\r\nConnection: keep-alive\r\n",
                                            b"\r\nConnection: close\r\n", 1)
            self.send(conn, response)
            self.served += 1
            if self.access_log:
                log_info(f"{request.method} {request.target} {request.version} "
                         f"{response[9:12].decode()}")
            if not keep_alive:
                return
            idle_since = time.monotonic()

    @staticmethod
    def body_length(request: Request) -> int:
        if "transfer-encoding" in request.headers:
            raise BadRequest(501, "chunked request bodies are not supported")
        value = request.headers.get("content-length")
        if value is None:
            return 0
        if not value.isdigit():
            raise BadRequest(400, "bad Content-Length")
        length = int(value)
        if length > 1024 * 1024:
            raise BadRequest(400, "request body too large")
        return length

    @staticmethod
    def send(conn: socket.socket, data: bytes) -> None:
        """sendall() with a SEND_TIMEOUT total, keeping the socket's short poll timeout."""
        view = memoryview(data)
        deadline = None
        while view:
            try:
                sent = conn.send(view)
            except TimeoutError:
                if deadline is None:
                    deadline = time.monotonic() + SEND_TIMEOUT
                elif time.monotonic() > deadline:
                    raise
                continue
            view = view[sent:]

    @staticmethod
    def close_gracefully(conn: socket.socket) -> None:
        """Half-close, then read until the client closes (or LINGER_TIMEOUT).

        Closing a socket with unread input makes the kernel send a reset, which can
        destroy the response still on its way to the client.
        """
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_TIMEOUT
            while time.monotonic() < deadline:
                try:
                    if not conn.recv(65536):
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            conn.close()

    # ----------------------------------------------------------------- routes

    def build_response(self, status: int, body: bytes, keep_alive: bool,
                       head_only: bool = False, extra: str = "") -> bytes:
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n"
                f"X-Release: {self.version}\r\n"
                f"{extra}"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode()
        return head if head_only else head + body

    def respond(self, request: Request, keep_alive: bool) -> bytes:
        self.fault_delay()
        path, _, query = request.target.partition("?")
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return self.build_response(405, b"method not allowed\n", keep_alive,
                                       extra="Allow: GET, HEAD\r\n")
        if path == "/" or path == "/health":
            table = self.root_responses if path == "/" else self.health_responses
            response = table[keep_alive]
            if head_only:
                response = response[:response.index(b"\r\n\r\n") + 4]
            return response
        if path == "/slow":
            try:
                ms = int(parse_qs(query).get("ms", ["1000"])[0])
            except ValueError:
                return self.build_response(400, b"ms must be an integer\n", keep_alive,
                                           head_only)
            ms = max(0, min(ms, MAX_SLOW_MS))
            time.sleep(ms / 1000)
            return self.build_response(200, f"slept {ms} ms\n".encode(), keep_alive,
                                       head_only)
        return self.build_response(404, b"not found\n", keep_alive, head_only)

    def fault_delay(self) -> None:
        delay_ms = self.faults.get("slow_response_ms", 0)
        first_ms = self.faults.get("slow_first_request_ms")
        if first_ms and not self.first_request_seen:
            with self.first_request_lock:
                if not self.first_request_seen:
                    self.first_request_seen = True
                    delay_ms += first_ms
        if delay_ms:
            time.sleep(delay_ms / 1000)


# --------------------------------------------------------------------------- CLI

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="sampleapp",
        description="Sample HTTP app for bloom-agent: socket activation, sd_notify, "
                    "graceful drain on SIGTERM, faults from faults.json.")
    parser.add_argument("--release-dir", type=Path, default=Path("."),
                        help="release root holding VERSION and faults.json (default: cwd)")
    parser.add_argument("--listen", action="append", default=[], metavar="HOST:PORT",
                        help="listen here when systemd passes no sockets "
                             "(HOST:PORT, [V6]:PORT or unix:/path; repeatable)")
    parser.add_argument("--drain-timeout", type=float, default=20.0, metavar="SEC",
                        help="hard cap on the graceful drain after SIGTERM (default 20)")
    parser.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="SEC",
                        help="close keep-alive connections idle this long (default 75)")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (off by default: it costs throughput)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        release_dir = args.release_dir.resolve()
        version = load_version(release_dir)
        faults = load_faults(release_dir)
        listeners = inherited_sockets(os.environ)
        if not listeners:
            listeners = [listen_on(spec) for spec in args.listen]
        if not listeners:
            raise BootError("no listening socket: run under systemd socket activation "
                            "(LISTEN_FDS) or pass --listen HOST:PORT")
    except (BootError, OSError) as exc:
        log_err(f"sampleapp: failed to boot: {exc}")
        return EXIT_BOOT_FAILED
    if faults:
        log_warning(f"sampleapp {version}: faults enabled: {json.dumps(faults, sort_keys=True)}")
    app = SampleApp(version, faults, listeners, Notifier(os.environ.get("NOTIFY_SOCKET")),
                    drain_timeout=args.drain_timeout, keepalive_timeout=args.keepalive_timeout,
                    access_log=args.access_log, watchdog=watchdog_interval(os.environ))
    return app.run()


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)        # don't wait for connection or watchdog threads
