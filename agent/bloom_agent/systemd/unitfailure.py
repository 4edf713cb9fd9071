"""Why a unit did not come up, in words an operator can act on.

systemd's own vocabulary ("start job: failed; result exit-code") says that something went wrong,
not what: the program's exit status and how soon it came, its last lines in the journal, and for
the shared socket the error systemd logged when it could not bind. This module reads those and
phrases them; the switcher decides what to do.
"""

from __future__ import annotations

import signal
import time
from typing import Callable

from bloom_agent.systemd.adapter import UnitStatus

# Lines of a unit's journal quoted in a failure message.
QUOTED_LINES = 3
# journald may still be writing a dying program's last lines when its start job fails.
JOURNAL_SETTLE_SEC = 0.3

# systemd's own exit statuses for a program it could not even start (systemd.exec(5)).
SYSTEMD_EXIT_STATUSES = {
    200: "CHDIR: the release directory could not be entered",
    203: "EXEC: the program could not be executed (missing, not executable, or a bad #! line)",
    216: "GROUP: the group does not exist",
    217: "USER: the user does not exist",
    226: "NAMESPACE: the sandbox could not be set up",
}

JournalTail = Callable[[str, float], list[str]]


def journal_tail(unit: str, since: float, limit: int = QUOTED_LINES) -> list[str]:
    """The last ``limit`` messages about ``unit`` since ``since``: for a service, what its program
    wrote (systemd's own "Failed with result" lines say nothing the reason does not); for a socket,
    the errors systemd logged about it (a bind that failed)."""
    from systemd import journal

    lines = _read(journal, unit, since, limit)
    if not lines:
        time.sleep(JOURNAL_SETTLE_SEC)
        lines = _read(journal, unit, since, limit)
    return lines


def _read(journal, unit: str, since: float, limit: int) -> list[str]:
    reader = journal.Reader()
    try:
        reader.this_boot()
        if unit.endswith(".service"):
            reader.add_match(_SYSTEMD_UNIT=unit)
        else:
            reader.add_match(UNIT=unit, PRIORITY="3")
        reader.seek_realtime(since)
        lines = [str(entry.get("MESSAGE", "")) for entry in iter(reader.get_next, {})]
    finally:
        reader.close()
    return [line[:300] for line in lines if line.strip()][-limit:]


def no_journal(unit: str, since: float) -> list[str]:
    """For places with no journal (unit tests, a host without systemd's journal)."""
    return []


def not_ready(status: UnitStatus, seconds: float, ready_timeout_sec: float, notify: bool) -> str:
    """Why a release's start did not end with it running and ready."""
    after = f"after {seconds:.1f} s"
    if status.result == "timeout":
        return f"{status.name} did not become ready within {ready_timeout_sec:g} s ({status.describe()})"
    if status.result == "protocol" and notify:
        return (f"{status.name} exited without sending READY=1, {after} (notify = true: the program must send "
                f"READY=1 once it serves; set notify = false in the app file for one that cannot)")
    if status.result == "signal":
        return f"{status.name} was killed by {_signal_name(status.exec_main_status)} {after}, before it was ready"
    if status.result == "exit-code" and status.exec_main_status in SYSTEMD_EXIT_STATUSES:
        return (f"systemd could not start {status.name}, {after}: status {status.exec_main_status}/"
                f"{SYSTEMD_EXIT_STATUSES[status.exec_main_status]}")
    if status.result == "exit-code":
        return f"{status.name} exited with status {status.exec_main_status} {after}, before it was ready"
    return f"{status.name} did not start, {after} ({status.describe()})"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def with_journal(reason: str, unit: str, lines: list[str], socket_unit: str | None = None) -> str:
    """The reason, the unit's last lines, and where to read the rest."""
    if lines:
        reason += "; last lines: " + " | ".join(lines)
    if socket_unit and any("Address already in use" in line for line in lines):
        reason += (f"; the program binds its own port, but {socket_unit} already holds it: take the listening "
                   f"socket systemd passes in (LISTEN_FDS, file descriptor 3; sd_listen_fds(3))")
    return f"{reason}; see: journalctl -u {unit}"
