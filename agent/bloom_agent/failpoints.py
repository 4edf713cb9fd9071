"""Crash the agent on purpose at a chosen step, once: how the tests prove recovery from kill -9.

Inert unless the agent's environment names a failpoint file (BLOOM_FAILPOINT_FILE); the file holds
one step name and is deleted before the agent kills itself, so the restarted agent runs through.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "BLOOM_FAILPOINT_FILE"


def hit(step: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        wanted = Path(path).read_text().strip()
    except OSError:
        return
    if wanted == step:
        Path(path).unlink(missing_ok=True)
        os.kill(os.getpid(), signal.SIGKILL)
