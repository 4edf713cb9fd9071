"""The test machine itself: systemd runs it, units work, machines stay apart and are
cleaned up. Needs no bloom-agent package."""

import concurrent.futures
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import machine as harness

TESTS = Path(harness.__file__).resolve().parent


def test_systemd_is_pid_1_and_the_system_runs(host):
    assert host.check_output("cat /proc/1/comm") == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), host.run("systemctl --failed").stdout
    assert host.system_info.codename == "bookworm"
    assert host.user().name == "root"


def test_run_put_get(machine, tmp_path):
    assert machine.run("echo $((6 * 7))").stdout == "42\n"
    assert machine.run(["hostname"]).stdout.strip() == machine.hostname
    (tmp_path / "probe.txt").write_text("over scp\n")
    machine.put(tmp_path / "probe.txt", "/root/")
    assert machine.host.file("/root/probe.txt").content_string == "over scp\n"
    machine.get("/root/probe.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "over scp\n"
    machine.run(["rm", "/root/probe.txt"], check=True)


APP = textwrap.dedent("""\
    import socket, sys
    listener = socket.socket(fileno=3)  # from systemd (LISTEN_FDS)
    body = sys.argv[1].encode()
    while True:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
        conn.close()
""")
SOCKET = textwrap.dedent("""\
    [Socket]
    ListenStream=127.0.0.1:18123
    Service=harness-probe@v1.service
""")
SERVICE = textwrap.dedent("""\
    [Service]
    Sockets=harness-probe.socket
    ExecStart=/usr/bin/python3 /usr/local/lib/harness-probe.py %i
""")


def test_socket_unit_with_template_service(machine, tmp_path):
    files = {"harness-probe.py": ("/usr/local/lib/", APP),
             "harness-probe.socket": ("/etc/systemd/system/", SOCKET),
             "harness-probe@.service": ("/etc/systemd/system/", SERVICE)}
    for name, (where, text) in files.items():
        (tmp_path / name).write_text(text)
        machine.put(tmp_path / name, where)
    host = machine.host
    try:
        host.run_test("systemctl daemon-reload && systemctl start harness-probe.socket")
        assert host.check_output("curl -sS --max-time 10 http://127.0.0.1:18123/") == "v1"
        assert host.service("harness-probe@v1").is_running
        assert host.socket("tcp://127.0.0.1:18123").is_listening
    finally:
        host.run("systemctl stop harness-probe.socket 'harness-probe@*.service'; "
                 "rm -f /etc/systemd/system/harness-probe* /usr/local/lib/harness-probe.py; "
                 "systemctl daemon-reload")


@pytest.fixture(scope="module")
def pair(nspawn_only):
    """Two more machines, booted at the same time."""
    machines = [harness.NspawnMachine(), harness.NspawnMachine()]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda m: m.boot(), machines))
        yield machines
    finally:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda m: m.destroy(), machines))
        assert not any(m.run_dir.exists() for m in machines)


def test_two_machines_do_not_collide(pair):
    a, b = pair
    assert a.hostname != b.hostname
    assert a.host.check_output("hostname") == a.hostname
    assert b.host.check_output("hostname") == b.hostname
    # each has its own network: the same port is free in both
    for m in pair:
        m.run("systemd-run --unit=listen -- python3 -m http.server --bind 127.0.0.1 8080", check=True)
    for m in pair:
        m.run("for i in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:8080/ && exit 0; "
              "sleep 0.1; done; exit 1", check=True)
        assert m.host.service("listen").is_running


def test_reboot_keeps_disk_and_clears_run(pair):
    m = pair[0]
    m.run("touch /var/tmp/kept /run/cleared", check=True)
    old_leader = m.leader
    m.reboot()
    assert m.leader != old_leader
    assert m.host.file("/var/tmp/kept").exists
    assert not m.host.file("/run/cleared").exists
    assert m.host.run("systemctl is-system-running").stdout.strip() in ("running", "degraded")


def test_ssh_machine_as_root_and_through_sudo(pair, tmp_path):
    """The --hosts path (a Vagrant VM, say), tried on a machine of the pair."""
    m = pair[1]
    m.run("useradd -m tester && cp -r /root/.ssh ~tester/ && chown -R tester: ~tester/.ssh && "
          "echo 'tester ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/tester", check=True)
    for spec in (f"ssh://{m.hostname}", f"ssh://tester@{m.hostname}"):
        ssh = harness.SshMachine(spec, m.ssh_config)
        assert ssh.hostname == m.hostname
        assert ssh.run("id -un").stdout == "root\n"
        assert ssh.host.user().name == "root"
        (tmp_path / "f").write_text(spec)
        ssh.put(tmp_path / "f", "/root/")
        assert m.run(["cat", "/root/f"]).stdout == spec
        ssh.destroy()  # leaves the host alone
    assert m.running and m.run("true").returncode == 0


KILLED_RUN = """\
import sys, time
sys.path.insert(0, {tests!r})
import machine
m = machine.NspawnMachine()
m.boot()
print(m.run_dir, m._nspawn.pid, m.leader, flush=True)
time.sleep(600)
"""


def test_leftover_of_a_killed_run_is_cleaned(nspawn_only, machine):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(tests=str(TESTS))],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
    finally:
        proc.kill()  # like a SIGKILLed pytest: no teardown at all
        proc.wait()
    assert line, "the child run did not boot its machine"
    run_dir, nspawn_pid, leader = line.split()
    run_dir, nspawn_pid, leader = Path(run_dir), int(nspawn_pid), int(leader)
    assert run_dir.is_dir() and harness._proc_start(leader) is not None  # left behind

    harness.cleanup_leftovers()  # (a concurrent run may get there first: same result)

    assert not run_dir.exists()
    assert harness._proc_start(nspawn_pid) is None and harness._proc_start(leader) is None
    # the live machine of this run (a "concurrent run") was not touched
    assert machine.run_dir.is_dir()
    assert machine.run("true").returncode == 0


def test_make_upgrade_deb(tmp_path):
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: harness-probe\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Test <test@example.org>\nDescription: probe\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(tmp_path / "p.deb")],
                   check=True, stdout=subprocess.DEVNULL)
    new = harness.make_upgrade_deb(tmp_path / "p.deb", "1:1.1", tmp_path / "out")
    assert new == tmp_path / "out" / "harness-probe_1.1_all.deb"
    fields = subprocess.run(["dpkg-deb", "-f", str(new), "Version"], capture_output=True,
                            text=True, check=True).stdout
    assert fields.strip() == "1:1.1"
