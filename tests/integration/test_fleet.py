"""A rolling deploy with Ansible across a fleet of three systemd machines, each with the .deb installed:
the collection in ansible/ built and installed with ansible-galaxy, its playbook run with
ansible-playbook against those machines. Each machine is in a network namespace of its own; the
controller reaches each one's sshd through it, and load stays inside each machine. Tests run in order.
"""

import concurrent.futures
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import machine as harness
from test_switch import make_release, start_load, stop_load

pytestmark = pytest.mark.usefixtures("nspawn_only")

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("web1", "web2", "web3")
APP_FILE = """\
listen = ["127.0.0.1:8080"]
exec = "bin/sampleapp"
probation_sec = 3
ready_timeout_sec = 20
stop_timeout_sec = 10
"""
# How the second host alone rejects a release in probation that the first host accepts: an HTTP check
# (they run once the new release serves alone) on a page the sample app does not have.
FAILING_CHECK = """
[[health_check]]
type = "http"
url = "http://127.0.0.1:8080/no-such-page"
interval_sec = 0.5
failures = 2
"""


def _up(deb: Path, say) -> harness.NspawnMachine:
    m = harness.NspawnMachine(progress=say)
    m.boot()
    try:
        m.put(deb, f"/root/{deb.name}")
        out = m.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", f"/root/{deb.name}"],
                    timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        m.run(f"mkdir -p /etc/bloom/apps && cat > /etc/bloom/apps/web.toml <<'EOF'\n{APP_FILE}EOF\n"
              "bloomctl reload", timeout=60)
    except BaseException:
        m.destroy()
        raise
    return m


class Fleet:
    def __init__(self, machines: dict, workdir: Path) -> None:
        self.machines, self.workdir = machines, workdir
        self.collections = workdir / "collections"
        built = subprocess.run(["ansible-galaxy", "collection", "build", str(REPO / "ansible"), "--output-path",
                                str(workdir), "--force"], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        tarball = next(workdir.glob("bloom-agent-*.tar.gz"))
        installed = subprocess.run(["ansible-galaxy", "collection", "install", str(tarball), "-p",
                                    str(self.collections), "--force"], capture_output=True, text=True)
        assert installed.returncode == 0, installed.stderr
        self.inventory = self.write_inventory()

    def write_inventory(self, unreachable: str = "") -> Path:
        lines = ["[bloom]"]
        for name, m in self.machines.items():
            config, more = m.ssh_config, ""
            if name == unreachable:
                # The same host with a proxy that cannot connect, and no shared connection left over
                # from earlier plays: as if its network were gone.
                config = self.workdir / f"{name}.unreachable.ssh_config"
                config.write_text(re.sub(r"ProxyCommand .*", "ProxyCommand /bin/false", m.ssh_config.read_text()))
                more = " ansible_ssh_args='-o ControlMaster=no -o ControlPath=none'"
            lines.append(f"{name} ansible_host={m.hostname} ansible_user=root ansible_ssh_common_args='-F {config}' "
                         f"ansible_python_interpreter=/usr/bin/python3{more}")
        path = self.workdir / (f"inventory-{unreachable}" if unreachable else "inventory")
        path.write_text("\n".join(lines) + "\n")
        return path

    def release(self, version: str) -> Path:
        built = make_release(version, self.workdir / "releases")
        named = self.workdir / f"web-{version}.tar.gz"
        shutil.copy(built, named)
        return named

    def play(self, version: str, *extra: str, inventory: Path | None = None,
             ansible: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(self.collections), "ANSIBLE_HOST_KEY_CHECKING": "False",
               "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"), "ANSIBLE_SSH_RETRIES": "0",
               "ANSIBLE_TIMEOUT": "10"}
        argv = [str(ansible / "ansible-playbook") if ansible else "ansible-playbook", "-i",
                str(inventory or self.inventory), "bloom.agent.rolling_deploy",
                "-e", "bloom_app=web", "-e", f"bloom_tarball={self.release(version)}", *extra]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)

    def current(self) -> dict[str, str]:
        return {name: m.run("curl -sS --max-time 5 http://127.0.0.1:8080/").stdout.strip()
                for name, m in self.machines.items()}

    def installed(self, name: str) -> list[str]:
        out = self.machines[name].run("bloomctl releases web --json")
        import json
        return [r["version"] for r in json.loads(out.stdout)]


@pytest.fixture(scope="module")
def fleet(deb, tmp_path_factory, request):
    if shutil.which("ansible-playbook") is None:
        pytest.fail("ansible-playbook is not installed (apt-get install ansible-core)", pytrace=False)
    say = lambda message: print(f"[fleet] {message}")  # noqa: E731
    machines = {}
    with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as pool:
        futures = {name: pool.submit(_up, deb, say) for name in HOSTS}
        failures = []
        for name, future in futures.items():
            try:
                machines[name] = future.result()
            except Exception as exc:
                failures.append(f"{name}: {exc}")
    try:
        assert not failures, failures
        yield Fleet(machines, tmp_path_factory.mktemp("fleet"))
    finally:
        for m in machines.values():
            m.destroy()


# ansible-test bootstraps pip in each of its virtual environments with a get-pip script it downloads
# from ci-files.testing.ansible.com, which CI cannot reach; this one gives the environment Debian's pip
# instead, which reaches PyPI like the rest of ansible-test's requirements.
GET_PIP = """import subprocess, sys
sys.exit(subprocess.call(["/usr/bin/python3", "-m", "pip", "--python", sys.executable, "install", *sys.argv[1:]]))
"""


def test_ansible_test_sanity_passes_on_the_collection(tmp_path):
    tree = tmp_path / "ansible_collections" / "bloom" / "agent"
    shutil.copytree(REPO / "ansible", tree)
    subprocess.run(["git", "init", "-q", "."], cwd=tree, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tree, check=True)
    cache = Path.home() / ".ansible/test/cache/get_pip_21_3_1.py"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(GET_PIP)
    out = subprocess.run(["ansible-test", "sanity", "--python", "3.11", "--requirements"], cwd=tree,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def _recap(out: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...}."""
    rows = re.findall(r"^(\S+)\s+:\s+(ok=.*)$", out, re.M)
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)} for host, counts in rows}


def test_a_good_release_rolls_out_to_every_host_without_a_failed_request(fleet):
    assert fleet.play("1.0.0").returncode == 0
    for m in fleet.machines.values():
        start_load(m.host, "http://127.0.0.1:8080/", "/tmp/wrk.out")
    try:
        began = time.monotonic()
        out = fleet.play("2.0.0")
        took = time.monotonic() - began
    finally:
        loads = {name: stop_load(m.host, "/tmp/wrk.out") for name, m in fleet.machines.items()}
    assert out.returncode == 0, out.stdout + out.stderr
    assert fleet.current() == {name: "sampleapp 2.0.0" for name in HOSTS}
    for name, wrk in loads.items():
        assert "Socket errors" not in wrk and "Non-2xx" not in wrk, f"{name}: {wrk}"
    assert re.search(r"web1: 2\.0\.0 \(serving, last: switch 2\.0\.0 done\); web2: 2\.0\.0 .*; web3: 2\.0\.0", out.stdout)
    recap = _recap(out.stdout)
    assert all(recap[name]["changed"] >= 1 and recap[name]["failed"] == 0 for name in HOSTS), recap
    print(f"rolled 2.0.0 across {len(HOSTS)} hosts in {took:.1f} s")


def test_the_same_play_again_changes_nothing(fleet):
    out = fleet.play("2.0.0")
    assert out.returncode == 0, out.stdout + out.stderr
    recap = _recap(out.stdout)
    assert all(recap[name]["changed"] == 0 for name in HOSTS), recap


def test_check_mode_changes_nothing_on_any_host(fleet):
    out = fleet.play("3.0.0", "--check", "--diff")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "-version: 2.0.0" in out.stdout and "+version: 3.0.0" in out.stdout
    assert fleet.current() == {name: "sampleapp 2.0.0" for name in HOSTS}
    assert all("3.0.0" not in fleet.installed(name) for name in HOSTS)


def test_a_release_that_fails_on_the_second_host_stops_the_rollout_and_reverts_the_first(fleet):
    web2 = fleet.machines["web2"]
    web2.run(f"cat > /etc/bloom/apps/web.toml <<'EOF'\n{APP_FILE}{FAILING_CHECK}EOF\nbloomctl reload")
    try:
        out = fleet.play("4.0.0")
    finally:
        web2.run(f"cat > /etc/bloom/apps/web.toml <<'EOF'\n{APP_FILE}EOF\nbloomctl reload")
    assert out.returncode != 0, out.stdout
    assert "rollout of web 4.0.0 stopped at web2" in out.stdout
    assert "rolled-back: probation: health check http#0 failed 2 times in a row" in out.stdout
    assert fleet.current() == {name: "sampleapp 2.0.0" for name in HOSTS}
    assert "4.0.0" in fleet.installed("web1") and "4.0.0" not in fleet.installed("web3"), "web3 never saw it"
    assert re.search(r"web1: 2\.0\.0 \(serving, last: rollback 2\.0\.0 done\); web2: 2\.0\.0 \(serving, last: switch "
                     r"4\.0\.0 rolled-back\); web3: 2\.0\.0 \(serving, last: switch 2\.0\.0 done\)", out.stdout), out.stdout


def test_a_host_unreachable_mid_rollout_is_reported_and_the_others_are_left_consistent(fleet):
    out = fleet.play("5.0.0", inventory=fleet.write_inventory(unreachable="web2"))
    assert out.returncode != 0, out.stdout
    assert "rollout of web 5.0.0 stopped at web2" in out.stdout and "web2 is unreachable" in out.stdout
    assert "web2: unreachable" in out.stdout
    assert fleet.current() == {name: "sampleapp 2.0.0" for name in HOSTS}
    assert "5.0.0" not in fleet.installed("web3")


def test_a_current_ansible_core_from_pypi_runs_the_play_too(fleet, tmp_path):
    venv = tmp_path / "ansible"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(venv / "bin/pip"), "install", "-q", "ansible-core"], capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    version = subprocess.run([str(venv / "bin/ansible"), "--version"], capture_output=True, text=True).stdout
    print(version.splitlines()[0])
    checked = fleet.play("6.0.0", "--check", "--diff", ansible=venv / "bin")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "+version: 6.0.0" in checked.stdout
    out = fleet.play("6.0.0", ansible=venv / "bin")
    assert out.returncode == 0, out.stdout + out.stderr
    assert fleet.current() == {name: "sampleapp 6.0.0" for name in HOSTS}
    again = fleet.play("6.0.0", ansible=venv / "bin")
    assert again.returncode == 0 and all(_recap(again.stdout)[name]["changed"] == 0 for name in HOSTS), again.stdout


def test_a_release_is_removed_with_state_absent_once(fleet):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(fleet.collections), "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_NOCOLOR": "1"}
    argv = ["ansible", "-i", str(fleet.inventory), "web1", "-m", "bloom.agent.release",
            "-a", "app=web version=4.0.0 state=absent"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0 and '"changed": true' in first.stdout, first.stdout + first.stderr
    assert "4.0.0" not in fleet.installed("web1")
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0 and '"changed": false' in second.stdout, second.stdout
    current = fleet.current()["web1"].split()[-1]
    in_use = subprocess.run(argv[:-1] + [f"app=web version={current} state=absent"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert in_use.returncode != 0 and f"cannot remove web {current}: it is the current release" in in_use.stdout, \
        in_use.stdout
