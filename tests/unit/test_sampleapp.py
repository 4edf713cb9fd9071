"""examples/sampleapp: the demo app run as a subprocess on an inherited socket.

Each instance gets the listening socket as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to its
own pid (a tiny wrapper sets it, then execs the app), and a datagram socket standing in for
systemd's NOTIFY_SOCKET.
"""

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "examples" / "sampleapp"
APP = APP_DIR / "sampleapp.py"
WRAPPER = ("import os, sys; fd = int(sys.argv[1]); fd == 3 or os.dup2(fd, 3); "
           "os.environ['LISTEN_PID'] = str(os.getpid()); os.execv(sys.argv[2], sys.argv[2:])")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def load_make_release():
    sys.path.insert(0, str(APP_DIR))
    try:
        import make_release
    finally:
        sys.path.remove(str(APP_DIR))
    return make_release


class Notify:
    """A bound AF_UNIX datagram socket playing systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"sampleapp-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = directory / f"notify-{id(self)}.sock"
            self.sock.bind(str(path))
            self.address = str(path)

    def messages(self, timeout: float) -> list[str]:
        """Every message received within timeout (each a list of KEY=VALUE lines, joined)."""
        got = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return got

    def wait_for(self, line: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                if line in self.sock.recv(4096).decode().splitlines():
                    return True
            except TimeoutError:
                return False
        return False


class Instance:
    def __init__(self, proc: subprocess.Popen, notify: Notify, log: Path):
        self.proc = proc
        self.notify = notify
        self.log = log

    def stderr(self) -> str:
        return self.log.read_text()


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="sa-") as d:   # short: AF_UNIX paths are limited
        yield Path(d)


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.fixture
def release(workdir):
    def make(version="1.0.0", faults=None):
        root = workdir / f"release-{version}"
        root.mkdir()
        (root / "VERSION").write_text(version + "\n")
        if faults is not None:
            (root / "faults.json").write_text(json.dumps(faults))
        return root
    return make


@pytest.fixture
def start(workdir, listener):
    started = []

    def start(release_dir, *, sock=None, abstract=False, env=None, args=(), program=None,
              wait_ready=True):
        sock = sock or listener
        notify = Notify(workdir, abstract=abstract)
        log = workdir / f"stderr-{len(started)}.log"
        full_env = dict(os.environ, LISTEN_FDS="1", NOTIFY_SOCKET=notify.address, **(env or {}))
        program = [str(program)] if program else [PYTHON, str(APP)]
        with log.open("w") as err:
            proc = subprocess.Popen(
                [PYTHON, "-c", WRAPPER, str(sock.fileno()), *program, *args],
                env=full_env, pass_fds=(sock.fileno(),), cwd=release_dir,
                stdout=subprocess.DEVNULL, stderr=err)
        inst = Instance(proc, notify, log)
        started.append(inst)
        if wait_ready:
            assert notify.wait_for("READY=1"), inst.stderr()
        return inst

    yield start
    for inst in started:
        if inst.proc.poll() is None:
            inst.proc.kill()
        inst.proc.wait()


def get(port, path="/", conn=None):
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read().decode(), resp


def port_of(sock):
    return sock.getsockname()[1]


def test_release_tarball_runs_and_serves(workdir, listener, start):
    make_release = load_make_release()
    tarball = make_release.make_release("1.2.3", workdir / "out")
    root = workdir / "unpacked"
    with tarfile.open(tarball) as tar:
        tar.extractall(root)                                    # our own archive
    inst = start(root, program=root / "bin" / "sampleapp")      # the shebang, mode 0755

    conn = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=10)
    status, body, resp = get(port_of(listener), "/", conn)
    assert (status, body) == (200, "sampleapp 1.2.3\n")
    assert resp.getheader("X-Release") == "1.2.3"
    status, body, _ = get(port_of(listener), "/health", conn)    # same keep-alive connection
    assert (status, body.strip()) == (200, "ok")
    assert get(port_of(listener), "/nope", conn)[0] == 404
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.proc.wait(timeout=5) == 0


def test_inherited_unix_socket(workdir, release, start):
    path = workdir / "app.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(path))
    unix.listen(16)
    try:
        start(release("3.0.0"), sock=unix)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(b"GET / HTTP/1.0\r\n\r\n")        # HTTP/1.0: the server closes
        data = b""
        while chunk := client.recv(4096):
            data += chunk
        client.close()
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in data
        assert data.endswith(b"\r\n\r\nsampleapp 3.0.0\n")
    finally:
        unix.close()


def test_abstract_notify_socket_and_watchdog(release, start):
    inst = start(release(faults={"stop_watchdog_after_sec": 0.5}), abstract=True,
                 env={"WATCHDOG_USEC": "100000"})       # READY=1 arrived on '@name'
    early = inst.notify.messages(0.4)
    assert early.count("WATCHDOG=1") >= 4
    time.sleep(0.3)
    inst.notify.messages(0.1)
    assert "WATCHDOG=1" not in inst.notify.messages(0.5)
    assert "stop_watchdog_after_sec" in inst.stderr()


def test_watchdog_pid_mismatch_means_no_pings(release, start):
    inst = start(release(), env={"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    assert "WATCHDOG=1" not in inst.notify.messages(0.4)


def test_two_instances_share_one_socket(release, listener, start):
    old = start(release("1.0.0"))
    start(release("2.0.0"))
    seen = set()
    for _ in range(300):
        seen.add(get(port_of(listener))[2].getheader("X-Release"))   # a new connection each
        if seen == {"1.0.0", "2.0.0"}:
            break
    assert seen == {"1.0.0", "2.0.0"}
    old.proc.send_signal(signal.SIGTERM)
    assert old.proc.wait(timeout=5) == 0
    assert {get(port_of(listener))[1] for _ in range(20)} == {"sampleapp 2.0.0\n"}


def test_sigterm_drains_requests_in_flight(release, listener, start):
    inst = start(release())
    port = port_of(listener)
    slow = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    slow.request("GET", "/slow?ms=800")
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert get(port, "/", idle)[0] == 200                  # now an idle keep-alive connection
    time.sleep(0.2)

    inst.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    # One more request on an idle keep-alive connection is answered, with Connection: close.
    status, body, resp = get(port, "/", idle)
    assert (status, body, resp.getheader("Connection")) == (200, "sampleapp 1.0.0\n", "close")
    resp = slow.getresponse()                             # the request in flight finishes
    assert (resp.status, resp.read()) == (200, b"slept 800 ms\n")
    assert resp.getheader("Connection") == "close"
    assert inst.proc.wait(timeout=5) == 0
    assert "drained" in inst.stderr()


def test_drain_closes_idle_connections_then_exits(release, listener, start):
    inst = start(release())
    port = port_of(listener)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    get(port, "/", idle)
    began = time.monotonic()
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.proc.wait(timeout=5) == 0
    assert 0.4 < time.monotonic() - began < 2.5
    assert idle.sock.recv(1) == b""                       # closed cleanly (FIN, not reset)


def test_drain_timeout_is_a_hard_cap(release, listener, start):
    inst = start(release(), args=["--drain-timeout", "0.5"])
    conn = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=10)
    conn.request("GET", "/slow?ms=5000")
    time.sleep(0.2)
    began = time.monotonic()
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.proc.wait(timeout=5) == 0
    assert time.monotonic() - began < 2
    assert "drain timeout" in inst.stderr()


def test_fault_exit_on_sigterm_without_drain(release, listener, start):
    inst = start(release(faults={"exit_on_sigterm_without_drain": True}))
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.proc.wait(timeout=5) == -signal.SIGTERM


def test_fault_crash_after_sec(release, start):
    inst = start(release(faults={"crash_after_sec": 0.3}))
    assert inst.proc.wait(timeout=5) == 1
    assert "<3>" in inst.stderr()
    clean = start(release("1.0.1", faults={"crash_after_sec": 0.3, "crash_exit_code": 0}))
    assert clean.proc.wait(timeout=5) == 0
    assert "crashing with exit code 0" in clean.stderr()


def test_fault_never_ready(release, listener, start):
    inst = start(release(faults={"never_ready": True}), wait_ready=False)
    messages = inst.notify.messages(1.0)
    assert not any("READY=1" in m.splitlines() for m in messages)
    assert inst.proc.poll() is None
    inst.proc.send_signal(signal.SIGTERM)
    assert inst.proc.wait(timeout=5) == 0


def test_fault_startup_delay(release, start):
    began = time.monotonic()
    start(release(faults={"startup_delay_sec": 0.5}))
    assert time.monotonic() - began >= 0.5


def test_fault_fail_health_and_slow_first_request(release, listener, start):
    start(release(faults={"fail_health": True, "slow_first_request_ms": 400}))
    began = time.monotonic()
    status, body, _ = get(port_of(listener), "/health")
    assert time.monotonic() - began >= 0.4
    assert status == 500
    began = time.monotonic()
    assert get(port_of(listener), "/")[0] == 200
    assert time.monotonic() - began < 0.3


def test_fault_error_and_warning_logs(release, start):
    inst = start(release(faults={"error_log_per_sec": 20, "warn_log_per_sec": 10}))
    time.sleep(1.0)
    lines = inst.stderr().splitlines()
    errors = [line for line in lines if line.startswith("<3>")]
    warnings = [line for line in lines if line.startswith("<4>") and "simulated" in line]
    assert 10 <= len(errors) <= 30
    assert 5 <= len(warnings) <= 15


@pytest.mark.parametrize("faults", [{"crash_afer_sec": 1}, {"fail_health": "yes"},
                                    {"slow_response_ms": -1}, ["never_ready"]])
def test_bad_faults_fail_to_boot(release, start, faults):
    inst = start(release(faults=faults), wait_ready=False)
    assert inst.proc.wait(timeout=5) == 2
    assert inst.stderr().startswith("<3>")


def test_no_socket_fails_to_boot(release):
    proc = subprocess.run([PYTHON, str(APP)], cwd=release(), capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("LISTEN")},
                          timeout=10)
    assert proc.returncode == 2
    assert "no listening socket" in proc.stderr


def test_make_release_archive(workdir):
    make_release = load_make_release()
    out = workdir / "out"
    tarball = make_release.make_release("2.0.1", out, faults={"crash_after_sec": 3})
    assert tarball == out / "sampleapp-2.0.1.tar.gz"
    with tarfile.open(tarball, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"bin", "bin/sampleapp", "VERSION", "faults.json"}
        for m in members.values():
            assert not m.name.startswith("/") and ".." not in m.name.split("/")
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root")
        assert members["bin/sampleapp"].mode == 0o755
        assert members["VERSION"].mode == 0o644
        assert tar.extractfile("VERSION").read() == b"2.0.1\n"
        assert json.loads(tar.extractfile("faults.json").read()) == {"crash_after_sec": 3}
        assert tar.extractfile("bin/sampleapp").read().startswith(b"#!/usr/bin/python3\n")

    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    sha_file = out / "sampleapp-2.0.1.tar.gz.sha256"
    assert sha_file.read_text() == f"{digest}  sampleapp-2.0.1.tar.gz\n"
    check = subprocess.run(["sha256sum", "-c", sha_file.name], cwd=out, capture_output=True)
    assert check.returncode == 0

    again = make_release.make_release("2.0.1", workdir / "again", faults={"crash_after_sec": 3})
    assert again.read_bytes() == tarball.read_bytes()        # reproducible


def test_make_release_cli_rejects_bad_input(workdir):
    script = APP_DIR / "make_release.py"
    healthy = subprocess.run([PYTHON, str(script), "--version", "1.0", "--out", str(workdir)],
                             capture_output=True, text=True)
    assert healthy.returncode == 0
    with tarfile.open(healthy.stdout.strip()) as tar:
        assert "faults.json" not in tar.getnames()
    for args in (["--version", "1.0", "--faults", '{"typo": 1}'],
                 ["--version", "../1.0"],
                 ["--version", "1.0", "--faults", "{not json"]):
        bad = subprocess.run([PYTHON, str(script), *args, "--out", str(workdir)],
                             capture_output=True, text=True)
        assert bad.returncode == 2, args


def test_the_migration_tool_goes_up_and_back_down_to_what_the_target_release_ships(tmp_path):
    import sqlite3

    make_release = load_make_release().make_release
    one = {1: ("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)", "DROP TABLE orders")}
    two = {**one, 2: ("ALTER TABLE orders ADD COLUMN price INTEGER; CREATE TABLE refunds (id INTEGER)",
                      "DROP TABLE refunds; ALTER TABLE orders DROP COLUMN price")}
    dirs = {}
    for version, migrations in (("1.0.0", one), ("2.0.0", two)):
        tarball = make_release(version, tmp_path / "out", migrations=migrations)
        dirs[version] = tmp_path / version
        dirs[version].mkdir()
        with tarfile.open(tarball) as tar:
            tar.extractall(dirs[version])  # our own tarball
    env = {**os.environ, "BLOOM_DATABASE_URL": str(tmp_path / "app.db")}

    def migrate(version, action, **extra):
        return subprocess.run([PYTHON, str(dirs[version] / "bin/migrate"), action], env={**env, **extra},
                              capture_output=True, text=True)

    def tables():
        db = sqlite3.connect(tmp_path / "app.db")
        try:
            return sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        finally:
            db.close()

    assert migrate("1.0.0", "pending").returncode == 0
    assert migrate("1.0.0", "up").stdout == "applied 001\n"
    assert migrate("1.0.0", "pending").returncode == 1
    assert migrate("2.0.0", "up").stdout == "applied 002\n"
    assert tables() == ["orders", "refunds", "schema_migrations"]
    out = migrate("2.0.0", "down", BLOOM_MIGRATE_TO="1.0.0", BLOOM_MIGRATE_TO_DIR=str(dirs["1.0.0"]))
    assert out.returncode == 0 and out.stdout == "reverted 002 (back to 1.0.0)\n", out.stderr
    assert tables() == ["orders", "schema_migrations"]
