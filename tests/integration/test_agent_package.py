"""bloom-agent as installed from the .deb, on real systemd (nspawn machine or an ssh host)."""

import json
import re
import time

import pytest

pytestmark = pytest.mark.usefixtures("installed")


def show(host, unit: str, *props: str) -> dict[str, str]:
    out = host.check_output(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status_json(host, app: str = "") -> dict:
    """bloomctl status --json: the answer, also when its exit code says an app is not serving (3) or an
    app file did not load (1)."""
    out = host.run(f"bloomctl status {app} --json")
    assert out.rc in (0, 1, 3) and out.stdout.startswith("{"), f"bloomctl status exited with {out.rc}: {out.stderr}"
    return json.loads(out.stdout)


def journal(host, unit: str, since: str = "") -> str:
    since_arg = f"--since '{since}'" if since else ""
    return host.check_output(f"journalctl -u {unit} --no-pager -o cat {since_arg}")


def machine_now(host) -> str:
    return host.check_output("date '+%Y-%m-%d %H:%M:%S'")


def test_agent_active_after_apt_install(machine):
    host = machine.host
    assert host.package("bloom-agent").is_installed
    assert host.service("bloom-agent").is_running
    assert host.service("bloom-agent").is_enabled
    assert host.service("bloom-agent.socket").is_running
    sock = host.file("/run/bloom/control.sock")
    assert sock.is_socket
    assert (sock.mode, sock.user, sock.group) == (0o660, "root", "bloom")
    assert host.group("bloom").exists
    assert host.file("/etc/bloom/agent.toml").is_file
    assert host.file("/var/lib/bloom/state.db").is_file
    # the documentation, uncompressed so that its links between pages work, and the journal catalog
    for doc in ("README.md", "docs/operations.md", "docs/security.md", "docs/recipes/python.md"):
        assert host.file(f"/usr/share/doc/bloom-agent/{doc}").is_file, doc
    assert host.file("/usr/lib/systemd/catalog/bloom-agent.catalog").is_file


def test_type_notify_ready_and_status_text(machine):
    host = machine.host
    props = show(host, "bloom-agent", "Type", "ActiveState", "SubState", "StatusText", "NotifyAccess", "WatchdogUSec")
    # For Type=notify systemd reports "active" only after READY=1 arrived.
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["StatusText"].startswith("idle")
    assert props["WatchdogUSec"] == "10s"
    assert "ready (config /etc/bloom/agent.toml" in journal(host, "bloom-agent")


def test_bloomctl_status_for_root(machine):
    host = machine.host
    out = host.run("bloomctl status")
    assert out.rc == 0, out.stderr
    assert re.search(r"^bloom-agent \d+\.\d+\.\d+\S*: idle \(pid \d+", out.stdout)
    data = status_json(host)
    assert data["agent"]["pid"] == int(show(host, "bloom-agent", "MainPID")["MainPID"])
    assert data["agent"]["under_systemd"] is True
    assert data["agent"]["watchdog_interval_sec"] == 5.0
    assert data["caller"]["user"] == "root"
    assert host.check_output("bloomctl --version").startswith("bloomctl ")


def test_bloomctl_for_member_and_refusal_for_others(machine):
    host = machine.host
    host.run("id alice || useradd --create-home --groups bloom alice")
    host.run("id mallory || useradd --create-home mallory")
    member = host.run("runuser -u alice -- bloomctl status --json")
    assert member.rc == 0, member.stderr
    assert json.loads(member.stdout)["caller"]["user"] == "alice"
    since = machine_now(host)
    other = host.run("runuser -u mallory -- bloomctl status")
    assert other.rc == 1
    assert other.stdout == ""
    assert "permission denied" in other.stderr
    assert "'bloom' group" in other.stderr
    # The attempt is in the journal, with the uid journald itself attached.
    uid = host.check_output("id -u mallory")
    logged = wait_until(
        lambda: host.check_output(f"journalctl --no-pager -o json SYSLOG_IDENTIFIER=bloomctl --since '{since}'"),
        10, "bloomctl's denial in the journal")
    entries = [json.loads(line) for line in logged.splitlines()]
    assert any(e["_UID"] == uid and "permission denied" in e["MESSAGE"] for e in entries)


def test_bloomctl_when_agent_is_stopped(machine):
    host = machine.host
    try:
        host.check_output("systemctl stop bloom-agent.socket bloom-agent.service")
        out = host.run("bloomctl status")
        assert out.rc == 1
        assert "bloom-agent is not running (start it with: systemctl start bloom-agent)" in out.stderr
    finally:
        host.check_output("systemctl start bloom-agent.socket bloom-agent.service")


def test_socket_activation_starts_the_agent(machine):
    host = machine.host
    host.check_output("systemctl stop bloom-agent.service")
    assert host.service("bloom-agent.socket").is_running
    assert not host.service("bloom-agent").is_running
    out = host.run("bloomctl status")
    assert out.rc == 0, out.stderr
    assert host.service("bloom-agent").is_running


def test_frozen_agent_is_restarted_by_its_watchdog(machine):
    host = machine.host
    before = show(host, "bloom-agent", "MainPID", "NRestarts")
    host.check_output(f"kill -STOP {before['MainPID']}")
    after = wait_until(
        lambda: (p := show(host, "bloom-agent", "MainPID", "NRestarts", "ActiveState"))["MainPID"] not in ("0", before["MainPID"])
        and p["ActiveState"] == "active" and p,
        60, "the watchdog to restart the frozen agent")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert "Watchdog timeout" in host.check_output("journalctl -u bloom-agent --no-pager -o cat")
    assert host.run("bloomctl status").rc == 0


def test_reload_with_bad_config_keeps_running_config(machine):
    host = machine.host
    original = host.file("/etc/bloom/agent.toml").content_string
    pid = show(host, "bloom-agent", "MainPID")["MainPID"]
    try:
        host.check_output("printf '[agent]\\nlog_level = 7\\n' > /etc/bloom/agent.toml")
        since = machine_now(host)
        # the reload waits for the agent's verdict, and fails with it
        refused = host.run("systemctl reload bloom-agent")
        assert refused.rc != 0, refused.stdout + refused.stderr
        message = "/etc/bloom/agent.toml: key 'agent.log_level': must be a string, got integer 7"
        wait_until(lambda: message in journal(host, "bloom-agent", since), 10, "the refusal in the journal")
        assert "configuration not reloaded, keeping the running one" in journal(host, "bloom-agent", since)
        assert show(host, "bloom-agent", "MainPID", "ActiveState") == {"MainPID": pid, "ActiveState": "active"}
        assert host.run("bloomctl status").rc == 0
    finally:
        host.check_output(f"cat > /etc/bloom/agent.toml <<'EOF'\n{original}EOF")
    assert host.run("systemctl reload bloom-agent").rc == 0


def test_bad_config_refused_at_start_without_restart_loop(machine):
    host = machine.host
    original = host.file("/etc/bloom/agent.toml").content_string
    try:
        host.check_output("printf '[agent]\\nstate_dri = \"/tmp\"\\n' > /etc/bloom/agent.toml")
        since = machine_now(host)
        assert host.run("systemctl restart bloom-agent").rc != 0
        props = show(host, "bloom-agent", "ActiveState", "ExecMainStatus", "Result")
        assert props["ExecMainStatus"] == "78"
        assert props["ActiveState"] == "failed"
        log = journal(host, "bloom-agent", since)
        assert "refusing to start: /etc/bloom/agent.toml: unknown key 'agent.state_dri'" in log
        time.sleep(3)  # RestartSec=1s: were it looping, it would have restarted by now
        assert show(host, "bloom-agent", "ActiveState")["ActiveState"] == "failed"
        out = host.run("bloomctl status")
        assert out.rc == 1
    finally:
        host.check_output(f"cat > /etc/bloom/agent.toml <<'EOF'\n{original}EOF")
        host.check_output("systemctl reset-failed bloom-agent; systemctl start bloom-agent")
    assert host.service("bloom-agent").is_running


def test_bash_completes_bloomctl_commands(machine):
    """The package's completion, loaded as bash-completion would, asks bloomctl for the words."""
    from shlex import quote

    script = ("source /usr/share/bash-completion/completions/bloomctl; COMP_WORDS=(bloomctl {words}); "
              "COMP_CWORD={cword}; _bloomctl_completion bloomctl 2>/dev/null; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    commands = machine.host.check_output("bash -c " + quote(script.format(words="st", cword=1))).split()
    assert "status" in commands and "deploy" not in commands
    sub = machine.host.check_output("bash -c " + quote(script.format(words="backup ''", cword=2))).split()
    assert sorted(sub) == ["create", "list", "restore"]
