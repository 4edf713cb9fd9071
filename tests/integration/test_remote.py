"""bloomctl -H: driving the machine's agent from here over its sshd, the tarball streamed with the
request; and a tarball piped into bloomctl over plain ssh."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import machine as harness
from test_agent_package import wait_until
from test_switch import make_release, ready_timeout

pytestmark = pytest.mark.usefixtures("installed")

REPO = Path(__file__).resolve().parents[2]
FAR_FILE = """\
listen = ["127.0.0.1:8084"]
exec = "bin/sampleapp"
probation_sec = 1
ready_timeout_sec = {ready}
"""


@pytest.fixture(scope="module")
def far(machine, tmp_path_factory):
    if not isinstance(machine, harness.NspawnMachine):
        pytest.skip("logs in as root over ssh: the nspawn machine's set-up")
    machine.host.check_output(f"mkdir -p /etc/bloom/apps && cat > /etc/bloom/apps/far.toml <<'EOF'\n"
                              f"{FAR_FILE.format(ready=ready_timeout(machine, 5))}EOF\nbloomctl reload")
    return Far(machine, tmp_path_factory.mktemp("far"))


class Far:
    def __init__(self, machine, workdir: Path) -> None:
        self.machine, self.workdir = machine, workdir

    def release(self, version: str, faults: dict | None = None) -> Path:
        built = make_release(version, self.workdir, faults=faults)
        named = built.with_name(f"far-{version}.tar.gz")
        built.rename(named)
        Path(f"{built}.sha256").unlink()
        return named

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(REPO / "agent"), "BLOOM_SSH": f"ssh -F {self.machine.ssh_config}"}

    def bloomctl(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """This source tree's bloomctl, here, acting on the machine's agent."""
        return subprocess.run(["/usr/bin/python3", "-m", "bloom_agent.cli", "-H", self.machine.hostname, *args],
                              env=self.env(), capture_output=True, text=True, timeout=180, **kwargs)

    def on_machine(self, command: str) -> str:
        return self.machine.host.check_output(command)


def test_deploy_status_health_and_rollback_from_here(far):
    out = far.bloomctl("deploy", "far", str(far.release("1.0.0")))
    assert out.returncode == 0, out.stderr
    assert "far: - -> 1.0.0: done" in out.stdout
    out = far.bloomctl("deploy", "far", str(far.release("1.1.0")))
    assert out.returncode == 0, out.stderr
    status = json.loads(far.bloomctl("status", "far", "--json").stdout)
    assert (status["current"], status["state"]) == ("1.1.0", "serving")
    assert far.on_machine("curl -sS --max-time 5 http://127.0.0.1:8084/") == "sampleapp 1.1.0"
    assert far.bloomctl("health", "far").returncode == 0
    # the same exit codes as on the host: 3 for a release rolled back
    bad = far.bloomctl("deploy", "far", str(far.release("1.2.0", {"crash_after_sec": 0.5})))
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "bloomctl: far 1.2.0: rolled-back: probation: crash" in bad.stderr
    back = far.bloomctl("rollback", "far")
    assert back.returncode == 0, back.stderr
    assert far.on_machine("curl -sS --max-time 5 http://127.0.0.1:8084/") == "sampleapp 1.0.0"
    # who did it, as the agent saw it: the ssh user, and where the session came from
    history = json.loads(far.bloomctl("history", "far", "--json").stdout)
    assert {h["caller"] for h in history} == {"root via ssh from 127.0.0.1"}, history
    journal = far.on_machine("journalctl -o json --no-pager BLOOM_APP=far MESSAGE_ID=9f2d6b1a4c8e4b7a3d5f0e9c1b2a6d85")
    assert {json.loads(line)["BLOOM_CALLER"] for line in journal.splitlines()} == {"root via ssh from 127.0.0.1"}


def test_a_tarball_piped_into_bloomctl_over_plain_ssh(far):
    tarball = far.release("1.3.0")
    with open(tarball, "rb") as stdin:
        out = subprocess.run(["ssh", "-F", str(far.machine.ssh_config), far.machine.hostname,
                              "bloomctl deploy far - --filename far-1.3.0.tar.gz"],
                             stdin=stdin, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "far: 1.0.0 -> 1.3.0: done" in out.stdout


def test_a_connection_lost_mid_upload_installs_nothing(far):
    before = (far.on_machine("bloomctl releases far --json"), far.on_machine("ls -a /var/lib/bloom/releases/far"))
    proc = subprocess.Popen(["/usr/bin/python3", "-m", "bloom_agent.cli", "-H", far.machine.hostname,
                             "install", "far", "-", "--version", "9.9.9"],
                            env=far.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.stdin.write(os.urandom(1536 * 1024))  # one whole chunk goes out, half of the next waits
        proc.stdin.flush()
        time.sleep(3)
    finally:
        proc.send_signal(signal.SIGKILL)  # bloomctl dies; its ssh sees the end of its input
        proc.wait(10)
    wait_until(lambda: json.loads(far.on_machine("bloomctl history far --json"))[0]["version"] == "9.9.9"
               and json.loads(far.on_machine("bloomctl history far --json"))[0]["outcome"] == "failed",
               30, "the agent to give the upload up")
    record = json.loads(far.on_machine("bloomctl history far --json"))[0]
    assert record["reason"].startswith("the upload ended after "), record
    after = (far.on_machine("bloomctl releases far --json"), far.on_machine("ls -a /var/lib/bloom/releases/far"))
    assert after == before, "nothing was installed, and no spool file is left"
