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
