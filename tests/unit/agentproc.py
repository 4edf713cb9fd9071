"""Run the agent as a real process for unit-level tests (no systemd needed)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_SRC = REPO / "agent"


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(AGENT_SRC)
    env.update(extra)
    return env


class RunningAgent:
    def __init__(self, tmp: Path, proc: subprocess.Popen, socket_path: Path, config: Path, log: Path) -> None:
        self.tmp, self.proc, self.socket_path, self.config, self.log = tmp, proc, socket_path, config, log

    def bloomctl(self, *args: str, user_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bloom_agent.cli", "--socket", str(self.socket_path), *args],
            env=agent_env(**(user_env or {})), capture_output=True, text=True, timeout=30,
        )

    def answers(self) -> bool:
        """The agent answered a status request. Run under --root it has no systemd, which status
        reports with exit 1; the answer is what counts here."""
        result = self.bloomctl("status")
        return result.returncode in (0, 1) and result.stdout.startswith("bloom-agent ")

    def log_text(self) -> str:
        return self.log.read_text()


def write_config(tmp: Path, extra: str = "") -> Path:
    """Paths in it are below the agent's --root, tmp (see daemon_argv): tmp/state, tmp/control.sock."""
    config = tmp / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "/state"\ncontrol_socket = "/control.sock"\n{extra}')
    return config


def daemon_argv(tmp: Path, config: Path, *extra: str) -> list[str]:
    """The agent under tmp as its root: it never touches the host's /etc, /run or systemd."""
    return [sys.executable, "-m", "bloom_agent.daemon", "--config", str(config), "--root", str(tmp), *extra]


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode} before listening")
        if path.exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"agent did not create {path} within {timeout} s")


