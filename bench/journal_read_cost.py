#!/usr/bin/python3
"""What reading one journal entry costs, by way of reading: CPU microseconds per entry.

    sudo /usr/bin/python3 bench/journal_read_cost.py [--lines 40000]   # boots a machine, runs itself there

In the machine, a transient unit logs LINES lines (journald's rate limit off for it); then each way
of reading goes through all of them with the journal monitor's matches (the unit's lines, journald's
suppression messages, systemd's lines about the unit), three times, and the best of the three is
printed: libsystemd finding the entries alone (``_next``), every field converted (``get_next``, the
monitor until this change), every field as bytes (``_get_all``), and fields one by one (``_get``),
which is cheap per call but scans the entry's items on each. Standard library and python3-systemd only.
"""

from __future__ import annotations

import subprocess
import sys
import time

UNIT = "bench-journal-read"
FIELDS_MONITOR = ("MESSAGE", "PRIORITY", "MESSAGE_ID", "UNIT", "_SYSTEMD_UNIT", "_PID", "_TRANSPORT")
FIELDS_FEW = ("_SYSTEMD_UNIT", "PRIORITY", "MESSAGE")
SUPPRESSED = "a596d6fe7bfa4994828e72309e95d61e"


def log_lines(n: int) -> None:
    code = f"import sys\nfor i in range({n}):\n    print(f'line {{i}} of the bench, a warning like an app logs', flush=False)\n"
    subprocess.run(["systemd-run", "--unit", UNIT, "--wait", "--quiet", "-p", "LogRateLimitIntervalSec=0",
                    "/usr/bin/python3", "-c", code], check=True)
    time.sleep(1)  # journald stores the stream's last lines


def open_reader(priority_filter: bool = False):
    from systemd import journal

    unit = f"{UNIT}.service"
    priorities = [f"PRIORITY={p}" for p in "0123"] if priority_filter else []
    reader = journal.Reader()
    reader.add_match(f"_SYSTEMD_UNIT={unit}", *priorities)
    reader.add_disjunction()
    reader.add_match("_PID=1", f"UNIT={unit}", *priorities)
    reader.add_disjunction()
    reader.add_match(f"MESSAGE_ID={SUPPRESSED}", "_TRANSPORT=driver")
    reader.seek_head()
    return reader


def by_get_next(reader) -> int:
    return sum(1 for _ in iter(reader.get_next, {}))


def by_next(reader) -> int:
    n = 0
    while reader._next():
        n += 1
    return n


def by_get_all(reader) -> int:
    n = 0
    while reader._next():
        entry = reader._get_all()
        entry.get(b"MESSAGE", entry.get("MESSAGE"))
        n += 1
    return n


def fields_one_by_one(fields):
    def read(reader) -> int:
        n = 0
        while reader._next():
            for field in fields:
                try:
                    reader._get(field)
                except KeyError:
                    pass
            n += 1
        return n
    return read


WAYS = (
    ("_next only (libsystemd finding the entries)", by_next, False),
    ("_next with PRIORITY<=3 matches (no error among them)", by_next, True),
    ("get_next: every field, converted", by_get_next, False),
    ("_get_all: every field, bytes", by_get_all, False),
    (f"_get of {len(FIELDS_MONITOR)} fields", fields_one_by_one(FIELDS_MONITOR), False),
    (f"_get of {len(FIELDS_FEW)} fields", fields_one_by_one(FIELDS_FEW), False),
)


def inside(lines: int) -> int:
    log_lines(lines)
    print(f"{lines} lines logged by {UNIT}.service; CPU per entry, best of 3:")
    for label, way, priority_filter in WAYS:
        best, count = None, 0
        for _ in range(3):
            reader = open_reader(priority_filter)
            t = time.process_time()
            count = way(reader)
            took = time.process_time() - t
            reader.close()
            best = took if best is None else min(best, took)
        per = f"{best / max(count, 1) * 1e6:6.2f} us/entry" if count else f"{best * 1000:.1f} ms in all"
        print(f"  {label:55} {count:7} entries  {per}")
    return 0


def main() -> int:
    lines = int(sys.argv[sys.argv.index("--lines") + 1]) if "--lines" in sys.argv else 40000
    if "--inside" in sys.argv:
        return inside(lines)
    from common import check_host, machine, run_itself_inside

    check_host()
    with machine() as m:
        return run_itself_inside(m, __file__, ["--lines", str(lines)], timeout=600)


if __name__ == "__main__":
    sys.exit(main())
