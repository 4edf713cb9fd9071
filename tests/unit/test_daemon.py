"""The daemon run as a real process, outside systemd: readiness, signals, control socket, errors."""

import json
import signal
import socket
import sqlite3
import subprocess
import sys

from agentproc import REPO, agent_env, daemon_argv, write_config


def raw_request(path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(payload)
        return json.loads(sock.makefile("rb").readline())


def test_ready_status_and_watchdog_are_notified(start_agent, notify_socket):
    path, receive = notify_socket
    agent = start_agent(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
    messages = [receive() for _ in range(4)]
    ready = next(m for m in messages if m.get("READY") == "1")
    assert ready["MAINPID"] == str(agent.proc.pid)
    assert "idle" in ready["STATUS"]
    # READY comes only once the control socket answers and the state is open.
    assert agent.answers()
    assert sum(1 for _ in range(3) if receive().get("WATCHDOG") == "1") == 3


def test_status_human_and_json(start_agent):
    agent = start_agent()
    human = agent.bloomctl("status")
    # run under --root, without systemd: status says so, and exits 1 as systemctl status would
    assert human.returncode == 1, human.stderr
    assert "bloom-agent 0.1.0: idle" in human.stdout
    assert "systemd: NOT REACHABLE (running under --root" in human.stdout
    result = agent.bloomctl("status", "--json")
    data = json.loads(result.stdout)
    assert data["agent"]["pid"] == agent.proc.pid
    assert data["agent"]["config"] == str(agent.config)
    assert data["agent"]["starts"] == 1
    assert data["apps"] == []


def test_bad_config_refused_with_exit_78(tmp_path):
    config = write_config(tmp_path, 'log_level = "chatty"\n')
    proc = subprocess.run(daemon_argv(tmp_path, config), env=agent_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert f"{config}: key 'agent.log_level': must be one of debug, info, warning, error; got 'chatty'" in proc.stderr
    assert not (tmp_path / "state").exists(), "a refused start must change nothing"


def test_check_config(tmp_path):
    config = write_config(tmp_path)
    proc = subprocess.run(daemon_argv(tmp_path, config, "--check-config"), env=agent_env(), capture_output=True,
                          text=True, timeout=30)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"{config}: OK")


def test_check_config_checks_every_app_file_too(tmp_path):
    config = write_config(tmp_path)
    apps = tmp_path / "etc/bloom/apps"  # below --root
    apps.mkdir(parents=True)
    (apps / "web.toml").write_text('listen = ["127.0.0.1:8080"]\nexec = "bin/x"\n')
    (apps / "api.toml").write_text('listen = ["127.0.0.1:8081"]\nexec = "bin/x"\nprobation_sec = "10s"\n')
    proc = subprocess.run(daemon_argv(tmp_path, config, "--check-config"), env=agent_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 78
    assert f"{apps / 'web.toml'}: OK" in proc.stdout
    assert f"{apps / 'api.toml'}: key 'probation_sec': must be a number" in proc.stderr


def test_reload_keeps_running_config_when_new_one_is_invalid(start_agent):
    agent = start_agent()
    before = json.loads(agent.bloomctl("status", "--json").stdout)["agent"]["config_loaded_at"]
    agent.config.write_text(agent.config.read_text() + "max_request_bytes = -5\n")
    agent.proc.send_signal(signal.SIGHUP)
    _wait_for_log(agent, "configuration not reloaded")
    assert "key 'agent.max_request_bytes': must be greater than 0, got -5" in agent.log_text()
    after = json.loads(agent.bloomctl("status", "--json").stdout)["agent"]
    assert after["config_loaded_at"] == before
    # A valid file is then taken: debug logging shows each request.
    agent.config.write_text(agent.config.read_text().replace("max_request_bytes = -5\n", 'log_level = "debug"\n'))
    agent.proc.send_signal(signal.SIGHUP)
    _wait_for_log(agent, "configuration reloaded")
    assert agent.answers()
    _wait_for_log(agent, ": status {}")


def test_protocol_errors_are_answered_not_fatal(start_agent):
    agent = start_agent(extra_config="max_request_bytes = 1024\n")
    too_big = raw_request(agent.socket_path, b"x" * 5000 + b"\n")
    assert too_big["error"]["code"] == "request_too_large"
    assert "1024 bytes" in too_big["error"]["message"]
    assert raw_request(agent.socket_path, b"{nope\n")["error"]["code"] == "protocol"
    unknown = raw_request(agent.socket_path, b'{"v":1,"command":"explode"}\n')
    assert unknown["error"]["code"] == "unknown_command" and "status" in unknown["error"]["hint"]
    extra = raw_request(agent.socket_path, b'{"v":1,"command":"status","args":{"x":1}}\n')
    assert extra["error"]["code"] == "invalid_arguments"
    assert agent.answers()


def test_sigterm_stops_cleanly_and_state_persists(start_agent, tmp_path):
    agent = start_agent()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=15) == 0
    assert not agent.socket_path.exists(), "a socket the agent bound itself is removed on exit"
    again = start_agent()
    assert json.loads(again.bloomctl("status", "--json").stdout)["agent"]["starts"] == 2
    again.proc.send_signal(signal.SIGTERM)
    again.proc.wait(timeout=15)
    events = [r[0] for r in sqlite3.connect(tmp_path / "state" / "state.db").execute("SELECT event FROM agent_events ORDER BY id")]
    assert events == ["start", "stop", "start", "stop"]


def test_second_agent_on_the_same_socket_is_refused(start_agent, tmp_path):
    start_agent()
    proc = subprocess.run(daemon_argv(tmp_path, tmp_path / "agent.toml"), env=agent_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 1
    assert "another agent is already listening" in proc.stderr


def test_bloomctl_without_agent(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bloom_agent.cli", "--socket", str(tmp_path / "none.sock"), "status"],
                          env=agent_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "bloom-agent is not running (start it with: systemctl start bloom-agent)" in proc.stderr
    assert proc.stdout == ""


def test_bloomctl_usage_error_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bloom_agent.cli", "status", "--bogus"],
                          env=agent_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "No such option: --bogus" in proc.stderr


def _wait_for_log(agent, text, timeout=10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in agent.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in agent log:\n{agent.log_text()}")


def test_without_a_system_bus_the_agent_refuses_to_start_with_exit_69(tmp_path):
    # On a host (no --root) the agent is nothing without systemd: it says so and exits with a status the
    # unit's RestartPreventExitStatus= lists, instead of running on with "no apps configured".
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path}/state"\ncontrol_socket = "{tmp_path}/control.sock"\n'
                      f'apps_dir = "{tmp_path}/apps"\n')
    proc = subprocess.run([sys.executable, "-m", "bloom_agent.daemon", "--config", str(config)],
                          env=agent_env(DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 69, proc.stderr
    assert "refusing to start: systemd cannot be reached over the D-Bus system bus" in proc.stderr
    assert "apt install dbus" in proc.stderr
    assert not (tmp_path / "control.sock").exists()
    unit = (REPO / "units" / "bloom-agent.service").read_text()
    assert "RestartPreventExitStatus=78 69\n" in unit
