"""Start failures phrased for an operator."""

import pytest

from bloom_agent.systemd import unitfailure
from bloom_agent.systemd.adapter import UnitStatus


def status(result, code=0, active="failed", sub="failed"):
    return UnitStatus("web@1.3.0.service", "loaded", active, sub, result, 0, 0, code)


@pytest.mark.parametrize("result, code, expected", [
    ("exit-code", 2, "web@1.3.0.service exited with status 2 after 0.4 s, before it was ready"),
    ("protocol", 0, "web@1.3.0.service exited without sending READY=1, after 0.4 s (notify = true"),
    ("signal", 11, "web@1.3.0.service was killed by SIGSEGV after 0.4 s, before it was ready"),
    ("exit-code", 203, "systemd could not start web@1.3.0.service, after 0.4 s: status 203/EXEC"),
    ("timeout", 0, "web@1.3.0.service did not become ready within 30 s (web@1.3.0.service is failed"),
])
def test_not_ready_says_what_happened(result, code, expected):
    assert unitfailure.not_ready(status(result, code), 0.4, 30, notify=True).startswith(expected)


def test_journal_lines_and_where_to_read_more():
    reason = unitfailure.with_journal("web@1.3.0.service exited with status 1 after 0.2 s", "web@1.3.0.service",
                                      ["Traceback (most recent call last):", "OSError: [Errno 98] Address already in use"],
                                      socket_unit="web.socket")
    assert reason.startswith("web@1.3.0.service exited with status 1 after 0.2 s; last lines: Traceback (most recent "
                             "call last): | OSError: [Errno 98] Address already in use; the program binds its own "
                             "port, but web.socket already holds it: take the listening socket systemd passes in")
    assert reason.endswith("; see: journalctl -u web@1.3.0.service")
    assert unitfailure.with_journal("x", "u.service", []) == "x; see: journalctl -u u.service"
