"""The parts of the D-Bus adapter that do not need systemd (the rest runs in tests/integration)."""

import asyncio
import os

import pytest

from bloom_agent.systemd.adapter import PystemdSystemd, SystemdCallFailed


def _fake_systemctl(tmp_path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\n" + script)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_daemon_reload_runs_systemctl(tmp_path, monkeypatch):
    _fake_systemctl(tmp_path, monkeypatch, f'echo "$@" > {tmp_path}/args\n')
    asyncio.run(PystemdSystemd.daemon_reload(None))  # it uses nothing of the bus
    assert (tmp_path / "args").read_text() == "daemon-reload\n"


def test_daemon_reload_failure_says_what_systemctl_said(tmp_path, monkeypatch):
    _fake_systemctl(tmp_path, monkeypatch, 'echo "Access denied" >&2; exit 1\n')
    with pytest.raises(SystemdCallFailed, match=r"systemctl daemon-reload exited with 1: Access denied"):
        asyncio.run(PystemdSystemd.daemon_reload(None))


class _Lost(Exception):
    errno = -107  # sd-bus: ENOTCONN, the connection is gone


class _Manager:
    def __init__(self, failures):
        self.failures = list(failures)
        self.Manager = self

    def ListUnitsByPatterns(self, states, patterns):
        if self.failures:
            raise self.failures.pop(0)
        return []


def _adapter(failures):
    sd = PystemdSystemd.__new__(PystemdSystemd)
    sd._manager = _Manager(failures)
    sd.reopened = []
    sd._reopen = sd.reopened.append
    return sd


def test_a_call_on_a_lost_bus_connection_reconnects_and_is_made_again_once():
    sd = _adapter([_Lost("gone")])
    assert sd.instances("web@*.service") == []
    assert len(sd.reopened) == 1


def test_other_dbus_errors_are_not_retried():
    sd = _adapter([ValueError("no such unit")])
    with pytest.raises(ValueError):
        sd.instances("web@*.service")
    assert sd.reopened == []
    sd = _adapter([_Lost("gone"), _Lost("still gone")])
    with pytest.raises(_Lost):
        sd.instances("web@*.service")
    assert len(sd.reopened) == 1
