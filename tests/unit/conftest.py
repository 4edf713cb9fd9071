import socket
import subprocess
import sys

import pytest

from agentproc import RunningAgent, agent_env, daemon_argv, wait_for_socket, write_config


@pytest.fixture
def start_agent(tmp_path):
    started: list[RunningAgent] = []

    def start(extra_config: str = "", env: dict | None = None) -> RunningAgent:
        config = write_config(tmp_path, extra_config)
        log = tmp_path / "agent.log"
        proc = subprocess.Popen(
            daemon_argv(tmp_path, config),
            env=agent_env(**(env or {})), stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        agent = RunningAgent(tmp_path, proc, tmp_path / "control.sock", config, log)
        started.append(agent)
        wait_for_socket(agent.socket_path, proc)
        # The socket is bound before the loop runs: one answered request means signals are handled too.
        assert agent.answers(), agent.log_text()
        return agent

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; yields (path, receive())."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)

    def receive() -> dict[str, str]:
        data = sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    yield path, receive
    sock.close()
