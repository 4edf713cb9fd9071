"""The agent built in-process (main()'s parts handed in): requests over its real control socket, the
app locks, reconcile after a restart, the probation fast path and operations on several apps at once."""

import asyncio
import json

import pytest

from bloom_agent.errors import Busy
from fake_systemd import FakeJournal
from inprocess import InProcessAgent


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture(autouse=True)
def quiet_journal():
    FakeJournal.entries = []


def test_a_deploy_over_the_control_socket_writes_everything_below_the_root(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)

    async def scenario():
        await host.start()
        progress = []
        out = await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")}, progress)
        status = await host.call("status", {"app": "web"})
        await host.stop()
        return out, status, progress

    out, status, progress = run(scenario())
    assert (out["outcome"], out["version"], out["exit_code"]) == ("done", "1.0.0", 0)
    assert [p["step"] for p in progress if "version" in p][:3] == ["installed", "starting", "checking"]
    assert (status["state"], status["current"], status["running"]) == ("serving", "1.0.0", ["web@1.0.0.service"])
    units = tmp_path / "etc/systemd/system"
    assert (units / "web.socket").is_file() and (units / "web@.service").is_file()
    assert "Service=web@1.0.0.service" in (units / "web.socket.d/50-bloom-release.conf").read_text()
    assert (tmp_path / "var/lib/bloom/releases/web/1.0.0/bin/app").is_file()
    assert not (tmp_path / "run/systemd/system/web.socket.d/60-bloom-trial.conf").exists()


def test_operations_on_different_apps_run_together_and_one_app_takes_one_at_a_time(tmp_path):
    host = InProcessAgent(tmp_path)
    for i, name in enumerate(("web", "api", "jobs")):
        host.declare(name, 8080 + i, probation=0.5)

    async def scenario():
        await host.start()
        deploys = [host.call("deploy", {"app": n, "tarball": host.tarball(n, "1.0.0")}) for n in ("web", "api", "jobs")]
        began = asyncio.get_running_loop().time()
        results = await asyncio.gather(*deploys)
        elapsed = asyncio.get_running_loop().time() - began
        started = await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "2.0.0"), "wait": False})
        with pytest.raises(Busy, match="busy: switch to 2.0.0 of web started by"):
            await host.call("switch", {"app": "web", "version": "1.0.0"})
        other = await host.call("status", {"app": "api"})
        await host.stop()
        return results, elapsed, started, other

    results, elapsed, started, other = run(scenario())
    assert [r["outcome"] for r in results] == ["done", "done", "done"]
    assert elapsed < 1.4, f"three 0.5 s probations took {elapsed:.2f} s: they ran one after another"
    assert started["outcome"] == "started" and other["state"] == "serving"


def test_rollback_during_probation_aborts_it_at_once(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080, probation=0.1)

    async def scenario():
        await host.start()
        await host.in_probation("web", "1.0.0", "2.0.0")
        began = asyncio.get_running_loop().time()
        out = await host.call("rollback", {"app": "web"})
        took = asyncio.get_running_loop().time() - began
        releases = {r["version"]: r["status"] for r in await host.call("releases", {"app": "web"})}
        await host.stop()
        return out, took, releases

    out, took, releases = run(scenario())
    assert (out["outcome"], out["exit_code"], out["serving"]) == ("rolled-back", 3, "1.0.0")
    assert out["reason"].startswith("rollback requested by ")
    assert took < 5, f"the abort took {took:.1f} s of a 60 s probation"
    assert releases == {"1.0.0": "current", "2.0.0": "rolled-back"}


@pytest.mark.parametrize("rebooted, serving, outcome", [(False, "2.0.0", "done"), (True, "1.0.0", "rolled-back")],
                         ids=["agent-restart", "host-reboot"])
def test_a_switch_in_probation_when_the_agent_stops_is_resumed_by_the_next_one(tmp_path, rebooted, serving, outcome):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080, probation=0.1)
    host.set_boot_id("boot-1")

    async def scenario():
        await host.start()
        await host.in_probation("web", "1.0.0", "2.0.0")
        assert await host.stop() == 0  # the switch in flight is left, recorded, to the next agent
        if rebooted:
            host.set_boot_id("boot-2")
        host.declare("web", 8080, probation=0.1)
        again = InProcessAgent(tmp_path, host.systemd)
        await again.start()
        await again.settled()
        history = await again.call("history", {"app": "web", "limit": 5})
        status = await again.call("status", {"app": "web"})
        await again.stop()
        return history, status

    history, status = run(scenario())
    switch = next(h for h in history if h["action"] == "switch" and h["version"] == "2.0.0")
    assert switch["outcome"] == outcome
    if rebooted:
        assert switch["reason"] == "the host rebooted during step probation; back on the last good release"
    assert (status["state"], status["current"], status["running"]) == ("serving", serving, [f"web@{serving}.service"])


def _bloomctl(socket_path, *args, stdin=None, env=None):
    """bloomctl as a process, against the in-process agent's socket."""
    import subprocess
    import sys

    from agentproc import agent_env

    return asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bloom_agent.cli", "--socket", str(socket_path),
                                              *args], stdin=stdin, capture_output=True, text=True, timeout=30,
                             env=agent_env(**(env or {})))


def test_a_tarball_from_standard_input_and_a_truncated_upload(tmp_path):
    import json
    import socket

    from bloom_agent.control import protocol

    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)

    async def scenario():
        await host.start()
        with open(host.tarball("web", "1.0.0"), "rb") as stdin:
            piped = await _bloomctl(host.paths.control_socket, "deploy", "web", "-", "--filename", "web-1.0.0.tar.gz",
                                    stdin=stdin)
        with open(host.tarball("web", "1.1.0"), "rb") as stdin:
            nameless = await _bloomctl(host.paths.control_socket, "install", "web", "-", stdin=stdin)

        def cut_short():
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(host.paths.control_socket))
                sock.sendall(protocol.encode_request("install", {"app": "web", "version": "2.0.0"}, upload=True))
                sock.sendall(protocol.CHUNK_HEADER.pack(1000) + b"x" * 10)
                sock.shutdown(socket.SHUT_WR)
                return json.loads(sock.makefile("rb").readline())

        truncated = await asyncio.to_thread(cut_short)
        releases = await host.call("releases", {"app": "web"})
        history = await host.call("history", {"app": "web", "limit": 1})
        await host.stop()
        return piped, nameless, truncated, releases, history

    piped, nameless, truncated, releases, history = run(scenario())
    assert piped.returncode == 0, piped.stderr
    assert "web: - -> 1.0.0: done" in piped.stdout
    assert nameless.returncode == 2
    assert "bloomctl: the release's version is needed: pass --version X.Y.Z" in nameless.stderr
    assert truncated["error"]["message"] == "the upload ended after 0 bytes: the connection closed before its end"
    assert [r["version"] for r in releases] == ["1.0.0"]
    assert (history[0]["version"], history[0]["outcome"]) == ("2.0.0", "failed")
    leftovers = [p.name for p in (tmp_path / "var/lib/bloom/releases/web").iterdir()]
    assert leftovers == ["1.0.0"], "no spool file or staging directory is left behind"


def test_an_upload_over_max_release_bytes_is_refused(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080, extra="max_release_bytes = 100\n")

    async def scenario():
        await host.start()
        try:
            await host.call("install", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        finally:
            await host.stop()

    from bloom_agent.errors import RequestTooLarge

    with pytest.raises(RequestTooLarge, match="upload larger than 100 bytes"):
        run(scenario())
    assert [p.name for p in (tmp_path / "var/lib/bloom/releases/web").iterdir()] == []


def test_bloomctl_dash_h_goes_through_ssh_and_the_stdio_bridge(tmp_path):
    """ssh itself is stood in for (tests/unit/fake_ssh.py); the bridge and the transport are real."""
    import sys
    from pathlib import Path

    fake_ssh = Path(__file__).with_name("fake_ssh.py")
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)

    async def scenario():
        await host.start()
        env = {"BLOOM_SSH": f"{sys.executable} {fake_ssh}", "BLOOM_SOCKET": str(host.paths.control_socket)}
        deployed = await _bloomctl("/nonexistent.sock", "-H", "deployer@web1:2222", "deploy", "web",
                                   str(host.tarball("web", "1.0.0")), env=env)
        status = await _bloomctl("/nonexistent.sock", "-H", "web1", "status", "web", "--json", env=env)
        unknown = await _bloomctl("/nonexistent.sock", "-H", "web1", "rollback", "nosuch", env=env)
        await host.stop()
        gone = await _bloomctl("/nonexistent.sock", "-H", "web1", "status", env=env)
        return deployed, status, unknown, gone

    deployed, status, unknown, gone = run(scenario())
    assert deployed.returncode == 0, deployed.stderr
    assert "web: - -> 1.0.0: done" in deployed.stdout
    assert json.loads(status.stdout)["current"] == "1.0.0"
    assert unknown.returncode == 1 and "bloomctl: unknown app 'nosuch'" in unknown.stderr
    assert gone.returncode == 1 and "bloom-agent is not running" in gone.stderr


@pytest.mark.parametrize("spec, argv", [
    ("web1", ["-xT", "web1"]),
    ("deploy@web1", ["-xT", "-l", "deploy", "web1"]),
    ("deploy@web1:2222", ["-xT", "-p", "2222", "-l", "deploy", "web1"]),
])
def test_ssh_command(spec, argv, monkeypatch):
    from bloom_agent.control.client import ssh_command

    monkeypatch.delenv("BLOOM_SSH", raising=False)
    assert ssh_command(spec) == ["ssh", *argv, "--", "bloomctl stdio-bridge"]
    assert ssh_command(spec, ("journalctl", "-u", "web@*.service"))[-1] == "journalctl -u 'web@*.service'"


def test_a_host_that_looks_like_an_option_is_refused():
    from bloom_agent.control.client import ssh_command
    from bloom_agent.errors import InvalidArguments

    with pytest.raises(InvalidArguments, match="cannot read host '-oProxyCommand=x'"):
        ssh_command("-oProxyCommand=x")


def test_idle_connections_beyond_the_cap_are_turned_away_and_the_agent_keeps_serving(tmp_path, monkeypatch):
    import socket

    from bloom_agent.control import server

    monkeypatch.setattr(server, "MAX_CONNECTIONS", 5)
    host = InProcessAgent(tmp_path)

    async def scenario():
        await host.start()
        idle = []
        for _ in range(5):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(host.paths.control_socket))
            idle.append(sock)
        await asyncio.sleep(0.1)
        extra = socket.socket(socket.AF_UNIX)
        extra.connect(str(host.paths.control_socket))
        answer = await asyncio.to_thread(extra.makefile("rb").readline)
        for sock in idle + [extra]:
            sock.close()
        await asyncio.sleep(0.1)
        status = await host.call("status")
        await host.stop()
        return json.loads(answer), status

    answer, status = run(scenario())
    assert answer["error"]["message"] == "the agent is serving 5 connections already"
    assert status["agent"]["state"] == "idle"


def test_progress_goes_to_stderr_with_times_when_not_a_terminal_and_quiet_silences_it(tmp_path):
    import re

    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)

    async def scenario():
        await host.start()
        loud = await _bloomctl(host.paths.control_socket, "deploy", "web", str(host.tarball("web", "1.0.0")))
        quiet = await _bloomctl(host.paths.control_socket, "deploy", "--quiet", "web", str(host.tarball("web", "2.0.0")))
        await host.stop()
        return loud, quiet

    loud, quiet = run(scenario())
    assert loud.returncode == 0 and quiet.returncode == 0
    steps = [line.split(" ", 1)[1] for line in loud.stderr.splitlines()]
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in loud.stderr.splitlines()), loud.stderr
    assert steps[:4] == ["installed: 1.0.0", "starting: 1.0.0", "checking: 1.0.0", "stopping-old: 1.0.0"]
    assert "blessing: 1.0.0" in steps
    assert quiet.stderr == "" and "web: 1.0.0 -> 2.0.0: done" in quiet.stdout


def test_status_exits_like_systemctl_status(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)
    host.declare("api", 8081)

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        codes = {}
        for args in (("status", "web"), ("status", "api"), ("status",)):
            codes[" ".join(args)] = (await _bloomctl(host.paths.control_socket, *args)).returncode
        host.systemd.crash("web@1.0.0.service", restarts=False)  # its release stopped for good
        codes["status web, stopped"] = (await _bloomctl(host.paths.control_socket, "status", "web")).returncode
        await host.stop()
        return codes

    assert run(scenario()) == {"status web": 0, "status api": 3, "status": 3, "status web, stopped": 3}


def test_show_gives_a_deployments_steps_and_their_times(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        shown = await host.call("show", {"app": "web"})
        human = await _bloomctl(host.paths.control_socket, "show", "web")
        missing = await _bloomctl(host.paths.control_socket, "show", "web", "999")
        await host.stop()
        return shown, human, missing

    shown, human, missing = run(scenario())
    assert (shown["action"], shown["version"], shown["outcome"]) == ("switch", "1.0.0", "done")
    assert [s["step"] for s in shown["steps"]] == ["starting", "checking", "stopping-old", "pointing", "probation",
                                                   "blessing", "done"]
    assert all(s["seconds"] >= 0 for s in shown["steps"][:-1]) and shown["steps"][-1]["seconds"] is None
    assert shown["steps"][4]["seconds"] >= 0.2  # the probation window
    assert human.stdout.startswith(f"web deployment {shown['id']}: switch - -> 1.0.0 by ")
    assert "  probation " in human.stdout
    assert missing.returncode == 1 and "web has no deployment 999" in missing.stderr


def test_wait_follows_a_switch_in_flight_and_exits_with_its_outcome(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080, probation=3)

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        started = await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "2.0.0"), "wait": False})
        waited = await _bloomctl(host.paths.control_socket, "wait", "web")
        FakeJournal.entries = [{"MESSAGE": f"db down {i}", "PRIORITY": 3} for i in range(21)]
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "3.0.0"), "wait": False})
        after = await _bloomctl(host.paths.control_socket, "wait", "web", "--json")
        await host.stop()
        return started, waited, after

    started, waited, after = run(scenario())
    assert started["outcome"] == "started"
    assert waited.returncode == 0, waited.stderr
    assert "web: 1.0.0 -> 2.0.0: done" in waited.stdout
    assert "blessing: 2.0.0" in waited.stderr, "the waiter hears the switch's progress"
    assert after.returncode == 3 and json.loads(after.stdout)["outcome"] == "rolled-back"


@pytest.mark.parametrize("args, expected", [
    (["web"], ["-u", "web@*.service", "-u", "web.socket"]),
    (["web", "1.2.0+b7", "-f", "-n", "50", "-o", "cat"],
     ["-u", "web@1.2.0_b7.service", "--follow", "--lines", "50", "--output", "cat"]),
])
def test_logs_runs_journalctl_on_the_releases(tmp_path, args, expected):
    import subprocess
    import sys

    from agentproc import agent_env

    fake = tmp_path / "journalctl"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
    fake.chmod(0o755)
    env = agent_env(PATH=f"{tmp_path}:/usr/bin:/bin")
    out = subprocess.run([sys.executable, "-m", "bloom_agent.cli", "logs", *args], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected


def test_metrics_for_node_exporters_textfile_collector(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)
    metrics_dir = tmp_path / "var/lib/prometheus/node-exporter"

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        assert not metrics_dir.exists(), "no directory, no metrics"
        metrics_dir.mkdir(parents=True)
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "2.0.0")})
        FakeJournal.entries = [{"MESSAGE": f"db down {i}", "PRIORITY": 3} for i in range(21)]
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "3.0.0")})
        text = (metrics_dir / "bloom.prom").read_text()
        await host.stop()
        return text, (metrics_dir / "bloom.prom").read_text()

    running, stopped = run(scenario())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(running) for s in family.samples}
    assert samples[("bloom_agent_up", ())] == 1
    assert samples[("bloom_app_release_info", (("app", "web"), ("version", "2.0.0")))] == 1
    assert samples[("bloom_app_state", (("app", "web"), ("state", "serving")))] == 1
    assert samples[("bloom_deployments_total", (("action", "switch"), ("app", "web"), ("outcome", "done")))] == 2
    assert samples[("bloom_deployments_total", (("action", "switch"), ("app", "web"), ("outcome", "rolled-back")))] == 1
    assert samples[("bloom_rollbacks_total", (("app", "web"), ("trigger", "journal")))] == 1
    assert samples[("bloom_probation_duration_seconds_count", (("app", "web"),))] == 3
    assert "bloom_agent_up 0.0" in stopped


def test_app_remove_takes_an_app_off_the_host(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)
    host.declare("api", 8081)

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        await host.call("deploy", {"app": "api", "tarball": host.tarball("api", "1.0.0")})
        removed = await host.call("app-remove", {"app": "web"})
        status = await host.call("status")
        await host.stop()
        return removed, status

    removed, status = run(scenario())
    assert removed["stopped"] == ["web@1.0.0.service"]
    assert [a["name"] for a in status["apps"]] == ["api"]
    units = tmp_path / "etc/systemd/system"
    assert not (units / "web.socket").exists() and not (units / "web@.service").exists()
    assert not (units / "web.socket.d").exists() and (units / "api.socket").exists()
    assert not (tmp_path / "var/lib/bloom/releases/web").exists()
    assert not (tmp_path / "etc/bloom/apps/web.toml").exists()
    assert host.systemd.unit("web@1.0.0.service").active_state == "inactive"
    assert ("disable", "web.socket") in host.systemd.calls
    assert host.systemd.unit("api@1.0.0.service").active_state == "active"


def test_backups_over_the_control_socket_list_create_and_restore(tmp_path):
    import os
    import sqlite3

    from bloom_agent.errors import DatabaseError

    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    database = tmp_path / "web.db"
    db = sqlite3.connect(database)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES ('before')")
    db.commit()
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080, extra=f'user = "{user}"\n[database]\nbackend = "sqlite"\nurl = "{database}"\n'
                                     f'min_free_bytes = 0\n')
    host.declare("plain", 8081)

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        made = await host.call("backup-create", {"app": "web"})
        db.execute("UPDATE t SET x = 'after'")
        db.commit()
        listed = await host.call("backup-list", {"app": "web"})
        restored = await host.call("backup-restore", {"app": "web", "backup": made["id"]})
        history = await host.call("history", {"app": "web"})
        with pytest.raises(DatabaseError, match="plain has no \\[database\\] table"):
            await host.call("backup-list", {"app": "plain"})
        with pytest.raises(DatabaseError, match="web has no backup 99"):
            await host.call("backup-restore", {"app": "web", "backup": 99})
        await host.stop()
        return made, listed, restored, history

    made, listed, restored, history = run(scenario())
    assert [b["id"] for b in listed] == [made["id"]] and made["version"] == "1.0.0"
    assert restored["serving"] == "1.0.0" and "writes since then are gone" in restored["restored"]
    assert db.execute("SELECT x FROM t").fetchall() == [("before",)]
    assert history[0]["action"] == "restore" and history[0]["outcome"] == "done"
    # The release was stopped for the restore and started again.
    assert host.systemd.calls[-2:] == [("reset-failed", "web@1.0.0.service"), ("start", "web@1.0.0.service")]


def test_install_check_validates_and_changes_nothing(tmp_path):
    from bloom_agent.errors import InstallError

    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)
    broken = tmp_path / "web-3.0.0.tar.gz"
    broken.write_bytes(b"not a tarball")

    async def scenario():
        await host.start()
        checked = await host.call("install", {"app": "web", "tarball": host.tarball("web", "1.0.0"), "check": True})
        releases = await host.call("releases", {"app": "web"})
        history = await host.call("history", {"app": "web"})
        with pytest.raises(InstallError):
            await host.call("install", {"app": "web", "tarball": broken, "check": True})
        await host.stop()
        return checked, releases, history

    checked, releases, history = run(scenario())
    assert checked["checked"] and not checked["unchanged"] and checked["version"] == "1.0.0"
    assert releases == [] and history == []
    assert list((tmp_path / "var/lib/bloom/releases/web").iterdir()) == []


def test_metrics_read_an_apps_history_again_only_after_another_deployment_ended(tmp_path):
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)
    host.declare("api", 8081)
    (tmp_path / "var/lib/prometheus/node-exporter").mkdir(parents=True)

    async def scenario():
        await host.start()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        store, reads = host.agent.apps.store, []
        real = store.finished_switches
        store.finished_switches = lambda app: reads.append(app) or real(app)
        await host.agent.metrics.write()
        await host.agent.metrics.write()
        first = sorted(reads)
        reads.clear()
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "2.0.0")})
        await host.agent.metrics.write()
        await host.stop()
        return first, reads

    first, after_deploy = run(scenario())
    assert first == []  # read when the agent wrote the file after the first deploy; nothing ended since
    assert after_deploy == ["web"]  # the app whose deployment ended, once, however often the file is written
