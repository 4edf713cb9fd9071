"""Crash or pause the agent on purpose at a chosen step, once: how the tests prove recovery from
kill -9 and from a release that dies while the agent is between steps.

Inert unless the agent's environment names a failpoint file (BLOOM_FAILPOINT_FILE). The file holds a
step name, to kill the agent with SIGKILL as it enters that step, or ``STEP pause SECONDS``, to wait
there; it is deleted when hit, so the (restarted) agent then runs through.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "BLOOM_FAILPOINT_FILE"


def hit(step: str) -> float:
    """Kill the agent here, or return how many seconds to pause (0: carry on)."""
    path = os.environ.get(ENV)
    if not path:
        return 0.0
    try:
        wanted = Path(path).read_text().split()
    except OSError:
        return 0.0
    if not wanted or wanted[0] != step:
        return 0.0
    Path(path).unlink(missing_ok=True)
    if len(wanted) == 3 and wanted[1] == "pause":
        return float(wanted[2])
    os.kill(os.getpid(), signal.SIGKILL)
    return 0.0
