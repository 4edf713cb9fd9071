"""Operator hooks: on_switch, on_rollback, on_rollback_failure commands from the app file.

Each runs through /bin/sh with the event as JSON on stdin (the successor of Bloom's
rollback_failure_callback). A hook that fails or hangs is logged; it never changes the outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger(__name__)

HOOK_TIMEOUT_SEC = 60.0


async def run_hooks(event: str, commands: tuple[str, ...], payload: dict) -> list[dict]:
    results = []
    data = json.dumps({"event": event, **payload}).encode()
    for command in commands:
        results.append(await _run_one(event, command, data))
    return results


async def _run_one(event: str, command: str, data: bytes) -> dict:
    proc = await asyncio.create_subprocess_shell(command, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(HOOK_TIMEOUT_SEC):
            out, _ = await proc.communicate(data)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        log.error("%s hook %r killed after %.0f s", event, command, HOOK_TIMEOUT_SEC)
        return {"command": command, "exit_code": None, "output": "timed out"}
    text = out.decode(errors="replace").strip()
    if proc.returncode:
        log.error("%s hook %r exited with %d: %s", event, command, proc.returncode, text[-500:])
    else:
        log.info("%s hook %r done%s", event, command, f": {text[-200:]}" if text else "")
    return {"command": command, "exit_code": proc.returncode, "output": text[-2000:]}
