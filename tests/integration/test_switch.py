"""Releases and the zero-downtime switch on real systemd, with the sample app's good and bad releases."""

import contextlib
import io
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

import machine as harness
from test_agent_package import status_json, show, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sampleapp"))
from make_release import make_release  # noqa: E402

pytestmark = pytest.mark.usefixtures("installed")

APP_FILE = """\
listen = ["127.0.0.1:8080"]
exec = "bin/sampleapp"
probation_sec = 2
ready_timeout_sec = {ready}
stop_timeout_sec = 10
keep_releases = 4
"""


def slow_host(machine) -> bool:
    """An ssh host (the Vagrant VM, under software emulation here) rather than the nspawn machine."""
    return not isinstance(machine, harness.NspawnMachine)


def ready_timeout(machine, seconds: int) -> int:
    """A release's ready_timeout_sec for the tests: the sample app is ready within about a second
    on the nspawn machine, but takes 1-3 s to start in a VM under software emulation, more while
    a test loads it; there the limit is generous, as an operator would set it for a slow host."""
    return 5 * seconds if slow_host(machine) else seconds


class App:
    """The app 'web' on the machine, and releases of the sample app built on this side."""

    def __init__(self, machine, workdir: Path) -> None:
        self.machine, self.host, self.workdir = machine, machine.host, workdir
        self.ready_timeout = ready_timeout(machine, 4)
        self.host.check_output("mkdir -p /etc/bloom/apps /root/releases")
        self.host.check_output(f"cat > /etc/bloom/apps/web.toml <<'EOF'\n{APP_FILE.format(ready=self.ready_timeout)}EOF")
        self.host.check_output("bloomctl reload")

    def release(self, version: str, faults: dict | None = None) -> str:
        """Build web-VERSION.tar.gz (+ .sha256) and copy it to the machine; returns its path there."""
        built = make_release(version, self.workdir, faults=faults)
        remote = f"/root/releases/web-{version}.tar.gz"
        self.machine.put(built, remote)
        self.machine.put(Path(f"{built}.sha256"), f"{remote}.sha256")
        return remote

    def bloomctl(self, *args: str):
        return self.host.run("bloomctl " + " ".join(args))

    def serving(self) -> str:
        return self.host.check_output("curl -sS --max-time 5 http://127.0.0.1:8080/")

    def status(self) -> dict:
        return status_json(self.host, "web")

    def running(self) -> list[str]:
        out = self.host.check_output("systemctl list-units --no-legend --plain --state=active,activating,reloading 'web@*.service'")
        return sorted(line.split()[0] for line in out.splitlines() if line.strip())

    def releases(self) -> dict[str, dict]:
        return {r["version"]: r for r in json.loads(self.host.check_output("bloomctl releases web --json"))}

    def history(self) -> list[dict]:
        return json.loads(self.host.check_output("bloomctl history web --json"))


@pytest.fixture(scope="module")
def app(machine, tmp_path_factory):
    return App(machine, tmp_path_factory.mktemp("releases"))


def test_first_deploy(app):
    tarball = app.release("1.0.0")
    out = app.bloomctl("deploy web", tarball)
    assert out.rc == 0, out.stderr
    assert "web: - -> 1.0.0: done" in out.stdout
    assert app.serving() == "sampleapp 1.0.0"
    status = app.status()
    assert (status["current"], status["state"], status["running"]) == ("1.0.0", "serving", ["web@1.0.0.service"])
    assert app.host.service("web.socket").is_enabled
    assert app.host.file("/etc/systemd/system/web.socket.d/50-bloom-release.conf").contains("Service=web@1.0.0.service")
    assert not app.host.file("/run/systemd/system/web.socket.d/60-bloom-trial.conf").exists


def start_load(host, url: str, out: str) -> None:
    """wrk in the background until stop_load: the load covers the whole operation however long it
    takes on a slow machine. A request counts as lost only after 10 s without an answer (wrk's default
    2 s is a latency figure, and latency is the benchmarks' business)."""
    host.check_output(f"rm -f {out}; (wrk -t2 -c40 -d300s --timeout 10s {url} > {out} 2>&1 &)")
    time.sleep(1.5)


def stop_load(host, out: str) -> str:
    """Stop wrk (SIGINT: it prints its summary) and return that summary."""
    host.run("pkill -INT -x wrk")
    return wait_until(lambda: (t := host.check_output(f"cat {out}")) and "Requests/sec" in t and t, 30, "wrk")


def under_load(host, url: str, command: str, at_least: int):
    """Run ``command`` on the machine under wrk's load on ``url``; assert that every request was
    answered (no socket error, no non-2xx) and that there were at least ``at_least``."""
    start_load(host, url, "/tmp/wrk.out")
    try:
        out = host.run(command)
    finally:
        wrk = stop_load(host, "/tmp/wrk.out")
    assert out.rc == 0, out.stdout + out.stderr
    assert "Socket errors" not in wrk, wrk
    assert "Non-2xx" not in wrk, wrk
    assert int(wrk.split(" requests in ")[0].split()[-1]) > at_least, wrk
    return out


def test_switch_under_load_loses_no_request(app):
    app.host.check_output("bloomctl install web " + app.release("1.1.0"))
    under_load(app.host, "http://127.0.0.1:8080/", "bloomctl switch web 1.1.0", 1000)
    assert app.serving() == "sampleapp 1.1.0"
    assert app.running() == ["web@1.1.0.service"]
    assert app.releases()["1.1.0"]["status"] == "current"
    assert app.releases()["1.0.0"]["status"] == "previous"
    # With no release running, a connection makes systemd start the new release, also after a reload.
    for reload in ("true", "systemctl daemon-reload"):
        app.host.check_output(f"{reload} && systemctl stop web@1.1.0.service")
        assert app.serving() == "sampleapp 1.1.0"
        assert app.running() == ["web@1.1.0.service"]


def test_crash_during_probation_rolls_back_with_exit_3(app):
    # After the old release has stopped: half a second on the nspawn machine; a slow VM takes longer
    # from READY to its pre-switch check, and a crash before that is a failed start, not a rollback.
    crash_after = 2 if slow_host(app.machine) else 0.5
    out = app.bloomctl("deploy web", app.release("1.2.0", {"crash_after_sec": crash_after}))
    assert out.rc == 3, out.stdout + out.stderr
    assert "rolled-back" in out.stderr and "the previous release was restored" in out.stderr
    assert app.serving() == "sampleapp 1.1.0"
    assert app.running() == ["web@1.1.0.service"]
    failed = app.releases()["1.2.0"]
    # The crash's exit status is in the reason when the agent sees the unit down; on a slow host systemd
    # may have restarted it by then, and the reason says so instead.
    assert failed["status"] == "failed" and "probation: crash: web@1.2.0.service" in failed["reason"]
    assert "exit status 1" in failed["reason"] or "restarted 1 time(s)" in failed["reason"], failed["reason"]
    last = app.history()[0]
    assert (last["action"], last["version"], last["from"], last["outcome"]) == ("switch", "1.2.0", "1.1.0", "rolled-back")


def test_release_that_never_gets_ready_is_refused_and_old_keeps_serving(app):
    out = app.bloomctl("deploy web", app.release("1.3.0", {"never_ready": True}))
    assert out.rc == 3, out.stdout + out.stderr
    assert f"did not become ready within {app.ready_timeout} s" in out.stderr
    assert app.serving() == "sampleapp 1.1.0"
    assert app.running() == ["web@1.1.0.service"]
    assert app.history()[0]["outcome"] == "failed"


def test_rollback_goes_to_previous_good_never_to_failed(app):
    refused = app.bloomctl("rollback web --to 1.2.0")
    assert refused.rc == 1 and "failed before" in refused.stderr
    out = app.bloomctl("rollback web")
    assert out.rc == 0, out.stderr
    assert app.serving() == "sampleapp 1.0.0"
    assert app.history()[0]["action"] == "rollback"
    assert app.bloomctl("switch web 1.1.0").rc == 0


def test_second_operation_is_busy(app):
    app.host.check_output("bloomctl install web " + app.release("1.4.0"))
    started = app.bloomctl("switch --no-wait web 1.4.0")
    assert started.rc == 0, started.stderr
    busy = app.bloomctl("switch web 1.0.0")
    assert busy.rc == 1
    assert "busy: switch to 1.4.0 of web started by root at" in busy.stderr
    wait_until(lambda: app.status()["state"] == "serving", 30, "the switch to finish")
    assert app.serving() == "sampleapp 1.4.0"


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name, data=b"", mode=0o755, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


BAD_TARBALLS = {
    "traversal": ([_member("bin/sampleapp", b"#!/bin/sh\n"), _member("../evil", b"x")], "contains '..'"),
    "absolute": ([_member("bin/sampleapp", b"#!/bin/sh\n"), _member("/etc/evil", b"x")], "absolute path"),
    "symlink-out": ([_member("bin/sampleapp", b"#!/bin/sh\n"), _member("x", kind=tarfile.SYMTYPE, link="../../../etc")],
                    "points outside the release"),
    "setuid": ([_member("bin/sampleapp", b"#!/bin/sh\n", mode=0o4755)], "setuid"),
    "device": ([_member("bin/sampleapp", b"#!/bin/sh\n"), _member("dev", kind=tarfile.CHRTYPE)], "special file"),
    "no-exec": ([_member("bin/other", b"#!/bin/sh\n")], "the release has no 'bin/sampleapp'"),
    "not-executable": ([_member("bin/sampleapp", b"#!/bin/sh\n", mode=0o644)], "is not an executable file"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARBALLS))
def test_bad_tarball_is_refused_and_changes_nothing(app, case, tmp_path):
    members, message = BAD_TARBALLS[case]
    _refused_and_nothing_changed(app, tmp_path, _tar_bytes(members), message)


def test_a_decompression_bomb_is_refused_and_changes_nothing(app, tmp_path):
    # 80 MiB of zeros in about 80 KB of gzip (a thousand to one): past the 64 MiB below which any archive
    # may expand as it likes, and well under max_release_bytes (2 GiB)
    bomb = _tar_bytes([_member("bin/sampleapp", b"#!/bin/sh\n"), _member("data/pad", bytes(80 * 1024 * 1024))])
    assert len(bomb) < 1024 * 1024
    _refused_and_nothing_changed(app, tmp_path, bomb, "unpacks to more than 200 times its own size")


def _refused_and_nothing_changed(app, tmp_path, tarball: bytes, message: str) -> None:
    local = tmp_path / "web-9.0.0.tar.gz"
    local.write_bytes(tarball)
    app.machine.put(local, "/root/releases/web-9.0.0.tar.gz")
    before = (app.releases(), app.host.check_output("ls -a /var/lib/bloom/releases/web"))
    out = app.bloomctl("install web /root/releases/web-9.0.0.tar.gz")
    assert out.rc == 1
    assert message in out.stderr
    assert (app.releases(), app.host.check_output("ls -a /var/lib/bloom/releases/web")) == before
    assert app.history()[0]["outcome"] == "failed"


@pytest.mark.parametrize("args, message", [
    ("--version 1.2/3 /root/releases/web-1.0.0.tar.gz", "invalid version '1.2/3': use letters, digits"),
    ("--version 1.0.0 /root/releases/web-1.1.0.tar.gz", "web 1.0.0 is already installed with other contents"),
    ("--version 7.0.0 --sha256 " + "0" * 64 + " /root/releases/web-1.0.0.tar.gz", "checksum mismatch"),
    ("--version 7.0.0 --sha256 xyz /root/releases/web-1.0.0.tar.gz", "is not a SHA-256"),
    ("/root/releases/garbage-7.0.0.tar.gz", "cannot tell the version from the file name"),
    ("--version 7.0.0 /root/releases/garbage-7.0.0.tar.gz", "is not a gzip, xz or zstd compressed tar archive"),
    ("--version 7.0.0 /root/releases/truncated.tar.gz", "is not a readable tar archive"),
])
def test_bad_install_input_is_refused_and_changes_nothing(app, args, message):
    app.host.check_output("head -c 3000 /dev/urandom > /root/releases/garbage-7.0.0.tar.gz")
    app.host.check_output("head -c 2000 /root/releases/web-1.0.0.tar.gz > /root/releases/truncated.tar.gz")
    before = (app.releases(), app.host.check_output("ls -a /var/lib/bloom/releases/web"))
    out = app.bloomctl("install web", args)
    assert out.rc == 1, out.stdout
    assert message in out.stderr
    assert (app.releases(), app.host.check_output("ls -a /var/lib/bloom/releases/web")) == before


def test_unknown_app_and_bad_app_file(app):
    out = app.bloomctl("switch nosuch 1.0.0")
    assert out.rc == 1 and "unknown app 'nosuch' (configured: " in out.stderr
    app.host.check_output("printf 'listen = [\"127.0.0.1:9\"]\\nexec = \"x\"\\nprobation = 3\\n' > /etc/bloom/apps/broken.toml")
    try:
        out = app.bloomctl("reload")
        assert "/etc/bloom/apps/broken.toml: unknown key 'probation'" in out.stderr
        assert app.status()["current"] == "1.4.0"
    finally:
        app.host.check_output("rm -f /etc/bloom/apps/broken.toml && bloomctl reload")


def test_remove_refuses_releases_in_use(app):
    assert "it is the current release" in app.bloomctl("remove web 1.4.0").stderr
    out = app.bloomctl("remove web 1.3.0")
    assert out.rc == 0, out.stderr
    assert "1.3.0" not in app.releases()
    assert not app.host.file("/var/lib/bloom/releases/web/1.3.0").exists


KILL_STEPS = {
    # step the agent is killed at -> which release serves once the restarted agent has reconciled
    "starting": "old", "checking": "old",
    "stopping-old": "new", "pointing": "new", "probation": "new", "blessing": "new",
}


@contextlib.contextmanager
def agent_failpoints(host):
    """The agent restarted with failpoints on (/run/bloom-failpoint, see bloom_agent.failpoints)."""
    host.check_output("mkdir -p /run/systemd/system/bloom-agent.service.d && printf '[Service]\\n"
                      "Environment=BLOOM_FAILPOINT_FILE=/run/bloom-failpoint\\n' "
                      "> /run/systemd/system/bloom-agent.service.d/failpoint.conf && systemctl daemon-reload "
                      "&& systemctl restart bloom-agent")
    try:
        yield
    finally:
        host.check_output("rm -rf /run/systemd/system/bloom-agent.service.d /run/bloom-failpoint "
                          "&& systemctl daemon-reload && systemctl restart bloom-agent")


@pytest.fixture(scope="module")
def failpoints(app):
    with agent_failpoints(app.host):
        yield


@pytest.mark.parametrize("step", list(KILL_STEPS))
def test_agent_killed_at_each_step_reconciles_to_one_serving_release(app, failpoints, step):
    old = app.status()["current"]
    new = "1.5.0" if old != "1.5.0" else "1.4.0"
    if new not in app.releases():
        app.host.check_output("bloomctl install web " + app.release(new))
    pid = show(app.host, "bloom-agent", "MainPID")["MainPID"]
    app.host.check_output(f"echo {step} > /run/bloom-failpoint")
    out = app.bloomctl("switch web", new)
    assert out.rc == 1, "the agent should have died under bloomctl"
    # systemd restarts the killed agent, which finishes or undoes the switch.
    wait_until(lambda: show(app.host, "bloom-agent", "MainPID")["MainPID"] not in ("0", pid), 30, "the agent's restart")
    wait_until(lambda: app.bloomctl("status web --json").rc == 0 and app.status()["state"] in ("serving",), 60,
               "the restarted agent to reconcile")
    expected = old if KILL_STEPS[step] == "old" else new
    assert app.status()["current"] == expected
    assert app.running() == [f"web@{expected}.service"], "exactly one serving release"
    assert app.serving() == f"sampleapp {expected}"
    record = next(h for h in app.history() if h["action"] == "switch" and h["version"] == new)
    assert record["finished_at"], "the interrupted switch is finished in the records"
    assert record["outcome"] == ("failed" if expected == old else "done")
    if expected == old:
        assert f"the agent restarted during step {step}" in record["reason"]
    assert not app.host.file("/run/bloom-failpoint").exists, "the failpoint was hit"


def test_reboot_comes_back_on_the_current_release(app, machine):
    current = app.status()["current"]
    machine.reboot()
    try:
        wait_until(lambda: app.host.run("curl -sS --max-time 5 http://127.0.0.1:8080/").stdout.strip() == f"sampleapp {current}",
                   30, "the app after reboot")
    except AssertionError:
        print(app.host.run("curl -sS --max-time 5 http://127.0.0.1:8080/; systemctl status web.socket 'web@*' bloom-agent --no-pager; "
                           "journalctl -b --no-pager -o cat -u bloom-agent -u 'web@*' | tail -40"))
        raise
    wait_until(lambda: app.running() == [f"web@{current}.service"], 30, "exactly the current release running")


def test_full_disk_during_unpack_is_refused_and_leaves_nothing(app, tmp_path):
    """The free-space check passes (min_free_bytes = 0), then the file system fills up mid-unpack."""
    host = app.host
    host.check_output("mkdir -p /srv/tiny && (mountpoint -q /srv/tiny || mount -t tmpfs -o size=256k tmpfs /srv/tiny)")
    host.check_output("printf 'listen = [\"127.0.0.1:8090\"]\\nexec = \"bin/sampleapp\"\\n"
                      "releases_dir = \"/srv/tiny/releases\"\\nmin_free_bytes = 0\\n' > /etc/bloom/apps/tiny.toml "
                      "&& bloomctl reload")
    try:
        big = tmp_path / "tiny-1.0.0.tar.gz"
        big.write_bytes(_tar_bytes([_member("bin/sampleapp", b"#!/bin/sh\n"),
                                    _member("data.bin", b"\0" * 600_000, mode=0o644)]))  # compresses to ~1 KiB
        app.machine.put(big, "/root/releases/tiny-1.0.0.tar.gz")
        out = host.run("bloomctl install tiny /root/releases/tiny-1.0.0.tar.gz")
        assert out.rc == 1
        assert "cannot install tiny 1.0.0: No space left on device" in out.stderr
        assert host.check_output("ls -A /srv/tiny/releases") == "", "the half-unpacked release is gone"
        assert json.loads(host.check_output("bloomctl releases tiny --json")) == []
        assert json.loads(host.check_output("bloomctl history tiny --json"))[0]["outcome"] == "failed"
    finally:
        host.run("rm -f /etc/bloom/apps/tiny.toml; bloomctl reload; umount /srv/tiny")
