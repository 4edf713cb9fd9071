#!/usr/bin/python3
"""How long does the agent's event loop stall while systemd reloads? The longest gap between the
ticks of a 5 ms ticker task during a daemon-reload, done three ways:

- ``pystemd-thread``: pystemd's Manager.Reload in a thread (asyncio.to_thread), on its own bus;
- ``pystemd-inline``: the same call on the loop itself, for reference;
- ``agent``: the agent's own ``PystemdSystemd.daemon_reload`` (systemctl in a child process).

    sudo /usr/bin/python3 bench/reload_stall.py [--units N] [--rounds R]

On the host it boots a machine, installs the package (``make deb`` first), adds N dummy units
(default 1500) so that a reload takes long enough to see, and runs itself there. A gap near the
reload's own duration means the loop (requests, watchdog pings) waited for systemd.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time


def _reload_pystemd() -> None:
    from pystemd.dbuslib import DBus
    from pystemd.systemd1 import Manager

    with DBus() as bus:
        manager = Manager(bus=bus)
        manager.load()
        manager.Manager.Reload()


async def _measure(way: str) -> tuple[float, float]:
    """(reload seconds, longest gap between ticks in seconds)"""
    from bloom_agent.systemd.adapter import PystemdSystemd

    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    systemd = PystemdSystemd()
    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    gaps.clear()
    began = time.monotonic()
    if way == "pystemd-thread":
        await asyncio.to_thread(_reload_pystemd)
    elif way == "pystemd-inline":
        _reload_pystemd()
    else:
        await systemd.daemon_reload()
    took = time.monotonic() - began
    await asyncio.sleep(0.02)
    done.set()
    await task
    systemd.close()
    return took, max(gaps)


def inside(rounds: int) -> int:
    for way in ("pystemd-inline", "pystemd-thread", "agent"):
        results = [asyncio.run(_measure(way)) for _ in range(rounds)]
        took = [r[0] * 1000 for r in results]
        gap = [r[1] * 1000 for r in results]
        print(f"{way:15} reload median {statistics.median(took):6.0f} ms (max {max(took):6.0f}); "
              f"longest loop stall median {statistics.median(gap):6.0f} ms (max {max(gap):6.0f})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args.rounds)
    from common import check_host, install_agent, machine, newest_deb, run_itself_inside, say

    check_host()
    with machine() as m:
        install_agent(m, newest_deb(), scripts=())
        m.run(f"for i in $(seq {args.units}); do printf '[Service]\\nExecStart=/bin/true\\n' "
              f"> /etc/systemd/system/bench-dummy-$i.service; done", check=True)
        say(f"{args.units} dummy units; {args.rounds} reloads each way")
        return run_itself_inside(m, __file__, ["--rounds", str(args.rounds)])


if __name__ == "__main__":
    sys.exit(main())
