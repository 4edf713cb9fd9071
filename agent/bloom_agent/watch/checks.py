"""Running one declared health check once, against a release.

Each check returns a CheckResult; thresholds (consecutive failures) live in the monitor that runs
checks repeatedly, so ``bloomctl health`` can run the very same check once.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from bloom_agent.config.checks import CheckSpec
from bloom_agent.watch.command import run_shell

ENTRY_POINT_GROUP = "bloom_agent.health_checks"
MAX_RESPONSE_BYTES = 256 * 1024


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Target:
    """What a check looks at: the app, the release and its unit."""

    app: str
    version: str
    unit: str
    unit_metrics: Callable[[str], Awaitable[dict[str, int | None]]]


async def run_check(spec: CheckSpec, target: Target) -> CheckResult:
    began = time.monotonic()
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that meets
        # an inner task just finished (an instant memory check), and the monitor would run on forever.
        async with asyncio.timeout(spec.timeout_sec):
            ok, detail = await _RUNNERS[spec.type](spec, target)
    except asyncio.TimeoutError:
        ok, detail = False, f"no answer within {spec.timeout_sec:g} s"
    except OSError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc.strerror or exc}"
    return CheckResult(spec.name, ok, detail, round(time.monotonic() - began, 4))


async def _http(spec: CheckSpec, target: Target) -> tuple[bool, str]:
    url = urlsplit(spec.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    began = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
                     f"User-Agent: bloom-agent-health\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read(MAX_RESPONSE_BYTES)  # up to EOF (Connection: close) or the cap
        while len(response) < MAX_RESPONSE_BYTES and (more := await reader.read(MAX_RESPONSE_BYTES - len(response))):
            response += more
    finally:
        writer.close()
    elapsed_ms = (time.monotonic() - began) * 1000
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"not an HTTP response: {status_line[:80]!r}"
    status = int(parts[1])
    if status != spec.expect_status:
        return False, f"HTTP {status} from {spec.url} (expected {spec.expect_status})"
    if spec.body_match and not re.search(spec.body_match, body.decode(errors="replace")):
        return False, f"body of {spec.url} does not match {spec.body_match!r}"
    if spec.max_response_time_ms and elapsed_ms > spec.max_response_time_ms:
        return False, f"{spec.url} answered in {elapsed_ms:.0f} ms > {spec.max_response_time_ms:g} ms"
    return True, f"HTTP {status} in {elapsed_ms:.0f} ms"


async def _tcp(spec: CheckSpec, target: Target) -> tuple[bool, str]:
    if spec.address.startswith("/"):
        _, writer = await asyncio.open_unix_connection(spec.address)
    else:
        host, _, port = spec.address.rpartition(":")
        _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.close()
    return True, f"connected to {spec.address}"


async def _command(spec: CheckSpec, target: Target) -> tuple[bool, str]:
    env = {**os.environ, "BLOOM_APP": target.app, "BLOOM_VERSION": target.version, "BLOOM_UNIT": target.unit}
    ran = await run_shell(spec.command, env=env)  # run_check's time limit cancels it, and that kills its group
    if ran.returncode != 0:
        last = ran.last_line
        return False, f"{spec.command!r} exited with {ran.returncode}" + (f": {last}" if last else "")
    return True, ran.last_line or "exit 0"


async def _memory(spec: CheckSpec, target: Target) -> tuple[bool, str]:
    used = (await target.unit_metrics(target.unit)).get("memory")
    if used is None:
        return True, "memory accounting unavailable for this unit; not checked"
    if used > spec.memory_threshold_bytes:
        return False, f"memory {used} bytes > {spec.memory_threshold_bytes}"
    return True, f"memory {used} bytes"


async def _tasks(spec: CheckSpec, target: Target) -> tuple[bool, str]:
    tasks = (await target.unit_metrics(target.unit)).get("tasks")
    if tasks is None:
        return True, "task accounting unavailable for this unit; not checked"
    if tasks > spec.max_tasks:
        return False, f"{tasks} tasks > {spec.max_tasks}"
    return True, f"{tasks} tasks"


async def _python(spec: CheckSpec, target: Target) -> tuple[bool, str]:
    # Only apps with a python check need entry points: importlib.metadata (2 MB with the email
    # package it loads) is not loaded at start-up.
    from importlib import metadata

    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec.entry_point]
    if not found:
        return False, f"no entry point {spec.entry_point!r} in group {ENTRY_POINT_GROUP}"
    check = found[0].load()
    if asyncio.iscoroutinefunction(check):
        result = await check(target)
    else:
        # A thread keeps a blocking check from stalling the agent's loop (and its watchdog); on timeout
        # the thread is abandoned, which Python cannot prevent, but the agent carries on.
        result = await asyncio.to_thread(check, target)
    if isinstance(result, tuple):
        return bool(result[0]), str(result[1])
    return bool(result), "ok" if result else "check returned false"


_RUNNERS = {"http": _http, "tcp": _tcp, "command": _command, "memory": _memory, "tasks": _tasks, "python": _python}
