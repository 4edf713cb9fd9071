"""An operator's shell command (a hook, a command check), run so that it cannot outlive its time limit
or flood the agent: in a process group of its own that is killed whole when it is done or out of
time, so no grandchild lingers under PID 1; only the last OUTPUT_CAP bytes of its output are kept."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
from dataclasses import dataclass
from typing import BinaryIO

OUTPUT_CAP = 64 * 1024
READ_BYTES = 64 * 1024


@dataclass(frozen=True)
class Ran:
    returncode: int | None  # None: killed at the time limit
    output: str             # the end of stdout and stderr together

    @property
    def last_line(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1][:200] if lines else ""


@dataclass(frozen=True)
class RunAs:
    """Who a command runs as, and where: an app's user for its migrations and pre-switch hooks."""

    user: str
    group: str = ""
    cwd: str | None = None

    @property
    def popen(self) -> dict:
        if os.geteuid() != 0:
            # Only root changes user; a test running unprivileged names itself and keeps its groups.
            return {"cwd": self.cwd}
        # Without a group, the user's own: Popen changes only the uid, and root's gid would stay.
        group = self.group or pwd.getpwnam(self.user).pw_gid
        return {"cwd": self.cwd, "user": self.user, "group": group, "extra_groups": []}


async def run_shell(command: str, *, stdin: bytes | None = None, env: dict[str, str] | None = None,
                    timeout: float | None = None, run_as: RunAs | None = None) -> Ran:
    """Run ``command`` through /bin/sh. A time limit (or the caller's cancellation) kills its group."""
    proc = await asyncio.create_subprocess_shell(
        command, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
        **(run_as.popen if run_as else {}))
    return await _finish(proc, proc.stdout, stdin, timeout)


async def run_program(argv: list[str], *, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None,
                      env: dict[str, str] | None = None, timeout: float | None = None,
                      run_as: RunAs | None = None) -> Ran:
    """Run a program with files for its input and output (a dump, a restore): ``output`` is then the end
    of its stderr. Killed whole at its time limit, like run_shell's command."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if stdout is not None else asyncio.subprocess.STDOUT,
        env=env, start_new_session=True, **(run_as.popen if run_as else {}))
    return await _finish(proc, proc.stderr if stdout is not None else proc.stdout, None, timeout)


async def _finish(proc: asyncio.subprocess.Process, output: asyncio.StreamReader, stdin: bytes | None,
                  timeout: float | None) -> Ran:
    tail = bytearray()

    async def feed_and_read() -> None:
        if stdin is not None:
            try:
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # it did not read its input: its business
        # Until the output closes: a grandchild holding it keeps us here, and the limit ends it.
        while chunk := await output.read(READ_BYTES):
            tail.extend(chunk)
            del tail[:-OUTPUT_CAP]
        await proc.wait()

    try:
        async with asyncio.timeout(timeout):
            await feed_and_read()
    except TimeoutError:
        await _end(proc)
        return Ran(None, tail.decode(errors="replace"))
    except asyncio.CancelledError:
        await _end(proc)
        raise
    await _end(proc)  # whatever it left running in the background goes with it
    return Ran(proc.returncode, tail.decode(errors="replace"))


async def _end(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone already
    if proc.returncode is None:
        await proc.wait()
