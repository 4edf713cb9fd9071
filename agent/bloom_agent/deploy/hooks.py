"""Operator hooks: on_switch, on_rollback, on_rollback_failure commands from the app file.

Each runs through /bin/sh with the event as JSON on stdin (the successor of Bloom's
rollback_failure_callback), in a process group of its own that is killed whole at its time limit. A
hook that fails or hangs is logged; it never changes the outcome.
"""

from __future__ import annotations

import json
import logging

from bloom_agent.watch.command import run_shell

log = logging.getLogger(__name__)

HOOK_TIMEOUT_SEC = 60.0


async def run_hooks(event: str, commands: tuple[str, ...], payload: dict) -> list[dict]:
    results = []
    data = json.dumps({"event": event, **payload}).encode()
    for command in commands:
        results.append(await _run_one(event, command, data))
    return results


async def _run_one(event: str, command: str, data: bytes) -> dict:
    ran = await run_shell(command, stdin=data, timeout=HOOK_TIMEOUT_SEC)
    text = ran.output.strip()
    if ran.returncode is None:
        log.error("%s hook %r killed after %.0f s", event, command, HOOK_TIMEOUT_SEC)
        return {"command": command, "exit_code": None, "output": "timed out"}
    if ran.returncode:
        log.error("%s hook %r exited with %d: %s", event, command, ran.returncode, text[-500:])
    else:
        log.info("%s hook %r done%s", event, command, f": {text[-200:]}" if text else "")
    return {"command": command, "exit_code": ran.returncode, "output": text[-2000:]}
