#!/usr/bin/python3
"""How late does a journal reader see new entries: waking on the journal's file descriptor (what
the agent's journal monitor does), or polling every 10 ms?

    sudo /usr/bin/python3 bench/journal_wakeup.py      # on the host: boots a machine, runs itself there

In the machine, a transient unit logs 20 lines a second for 10 s, once per way of reading; for each
line, the delay between journald's timestamp and the moment the reader got it. journald tells readers
about new entries through inotify on a coalescing timer, so waking on the descriptor alone adds up to
that timer's period. Standard library and python3-systemd only.
"""

from __future__ import annotations

import select
import statistics
import subprocess
import sys
import time

LOGGER = "import time\nfor i in range(200):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)\n"


def measure(mode: str, unit: str) -> dict:
    from systemd import journal

    subprocess.run(["systemd-run", "--unit", unit, "--quiet", "/usr/bin/python3", "-c", LOGGER], check=True)
    reader = journal.Reader()
    reader.add_match(_SYSTEMD_UNIT=f"{unit}.service")
    reader.seek_tail()
    reader.get_previous()
    lags = []
    end = time.time() + 12
    while time.time() < end:
        if mode == "descriptor":
            select.select([reader.fileno()], [], [], 1.0)
            reader.process()
        else:
            time.sleep(0.01)
        for entry in iter(reader.get_next, {}):
            if str(entry.get("MESSAGE", "")).startswith("line "):
                lags.append(time.time() - entry["__REALTIME_TIMESTAMP"].timestamp())
    reader.close()
    lags.sort()
    return {"mode": mode, "lines": len(lags), "median_ms": 1000 * statistics.median(lags),
            "p90_ms": 1000 * lags[int(0.9 * len(lags))], "max_ms": 1000 * lags[-1]}


def inside() -> int:
    for mode in ("descriptor", "poll-10ms"):
        r = measure(mode, f"bench-journal-{mode}")
        print(f"{r['mode']:12} {r['lines']} lines: delay median {r['median_ms']:.1f} ms, "
              f"p90 {r['p90_ms']:.1f} ms, max {r['max_ms']:.1f} ms")
    return 0


def main() -> int:
    if "--inside" in sys.argv:
        return inside()
    from common import check_host, machine, run_itself_inside

    check_host()
    with machine() as m:
        return run_itself_inside(m, __file__, timeout=120)


if __name__ == "__main__":
    sys.exit(main())
