"""Operator commands: their whole process group ends with them, and their output is capped."""

import asyncio
import os
import time

from bloom_agent.watch import command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split()[2] != "Z"


def test_a_time_limit_kills_the_grandchildren_too(tmp_path):
    pidfile = tmp_path / "pid"
    began = time.monotonic()
    ran = asyncio.run(command.run_shell(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.5))
    assert ran.returncode is None and time.monotonic() - began < 5
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        time.sleep(0.02)
    assert not _alive(grandchild), "the background sleep outlived its command"


def test_what_a_command_leaves_behind_goes_with_it(tmp_path):
    pidfile = tmp_path / "pid"
    ran = asyncio.run(command.run_shell(f"(sleep 30 > /dev/null 2>&1 &); echo started; "
                                        f"pgrep -n -f 'sleep 30' > {pidfile}", timeout=5))
    assert (ran.returncode, ran.output.strip()) == (0, "started")
    time.sleep(0.1)
    assert not _alive(int(pidfile.read_text()))


def test_output_is_capped_and_the_end_is_kept():
    ran = asyncio.run(command.run_shell("head -c 5000000 /dev/zero | tr '\\0' x; echo; echo last", timeout=20))
    assert ran.returncode == 0 and len(ran.output) == command.OUTPUT_CAP
    assert ran.last_line == "last"


def test_cancelling_it_kills_its_group(tmp_path):
    pidfile = tmp_path / "pid"

    async def scenario():
        task = asyncio.ensure_future(command.run_shell(f"sleep 30 & echo $! > {pidfile}; wait"))
        await asyncio.sleep(0.3)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())
    time.sleep(0.1)
    assert not _alive(int(pidfile.read_text()))


def test_input_it_does_not_read_is_no_error():
    ran = asyncio.run(command.run_shell("exit 3", stdin=b"x" * 1_000_000, timeout=5))
    assert ran.returncode == 3
