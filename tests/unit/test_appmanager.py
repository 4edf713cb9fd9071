"""The app manager over the fake systemd: where rollbacks go, what retention keeps, app files refused."""

import asyncio

import pytest

from bloom_agent.control.auth import Caller
from bloom_agent.deploy.manager import AppManager
from bloom_agent.deploy.switcher import Journal
from bloom_agent.errors import BloomError, ConfigError
from bloom_agent.store.state import StateStore
from bloom_agent.systemd.unitfailure import no_journal
from bloom_agent.systemd.unitfiles import UnitPaths, UnitWriter
from fake_systemd import FakeJournal, FakeSystemd

ROOT = Caller(pid=1, uid=0, gid=0)
APP = 'listen = ["127.0.0.1:{port}"]\nexec = "bin/app"\nprobation_sec = 0.05\nkeep_releases = {keep}\n'


class Env:
    def __init__(self, tmp_path, keep=10):
        # One loop for the whole test: the fake systemd's events belong to the loop that made them.
        self.loop = asyncio.new_event_loop()
        self.tmp = tmp_path
        self.apps_dir = tmp_path / "apps"
        self.apps_dir.mkdir()
        (self.apps_dir / "web.toml").write_text(APP.format(port=8080, keep=keep))
        self.store = StateStore(tmp_path / "state.db")
        self.systemd = FakeSystemd()
        FakeJournal.entries = []
        self.manager = AppManager(self.apps_dir, tmp_path / "rel", self.store, self.systemd,
                                  UnitWriter(UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run")),
                                  Journal(monitor=FakeJournal, tail=no_journal))
        self.run(self.manager.load())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def add(self, *versions):
        for v in versions:
            self.store.add_release("web", v, v, "0" * 64, 1)
            (self.tmp / "rel" / "web" / v).mkdir(parents=True)

    def switch(self, version):
        return self.run(self.manager.switch("web", version, ROOT))

    def rollback(self, to=None):
        return self.run(self.manager.rollback("web", to, ROOT))

    def statuses(self):
        return {r["version"]: r["status"] for r in self.manager.release_rows("web")}


@pytest.fixture
def env(tmp_path):
    env = Env(tmp_path)
    yield env
    env.loop.close()


def test_manual_rollback_marks_the_release_it_leaves_and_never_returns_to_it(env):
    env.add("1.0.0", "1.1.0", "1.2.0")
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        assert env.switch(v)["outcome"] == "done"
    assert env.statuses() == {"1.0.0": "good", "1.1.0": "previous", "1.2.0": "current"}
    out = env.rollback()
    assert (out["outcome"], out["version"]) == ("done", "1.1.0")
    assert env.statuses() == {"1.0.0": "previous", "1.1.0": "current", "1.2.0": "rolled-back"}
    assert env.store.release("web", "1.2.0")["reason"] == "rolled back to 1.1.0 by root"
    # rollback after rollback goes further back, never to the release rolled back
    assert env.rollback()["version"] == "1.0.0"
    assert env.statuses() == {"1.0.0": "current", "1.1.0": "rolled-back", "1.2.0": "rolled-back"}
    with pytest.raises(BloomError, match="no earlier good release"):
        env.rollback()
    # named, a rolled-back release is a valid target
    assert env.rollback(to="1.2.0")["outcome"] == "done"
    assert env.statuses()["1.2.0"] == "current"


def test_previous_is_the_release_that_served_before_not_the_newest_installed(env):
    env.add("2.0.0", "1.0.0")  # installed in this order: 1.0.0 is newer on disk
    env.switch("2.0.0")
    env.switch("1.0.0")
    assert env.statuses() == {"2.0.0": "previous", "1.0.0": "current"}


def test_retention_keeps_previous_and_removes_failed_and_never_run_first(tmp_path):
    env = Env(tmp_path, keep=3)  # its loop closes with the test process
    env.add("1.0.0", "2.0.0", "3.0.0")
    env.switch("1.0.0")
    env.switch("2.0.0")
    env.store.set_release_status("web", "3.0.0", "failed", "crashed")
    env.add("4.0.0", "5.0.0")  # 4.0.0 is never run
    out = env.switch("5.0.0")
    assert out["outcome"] == "done"
    # over by two: the failed and the never-run go; 2.0.0 (served just before) and 1.0.0 stay
    assert env.statuses() == {"1.0.0": "good", "2.0.0": "previous", "5.0.0": "current"}
    assert sorted(p.name for p in (tmp_path / "rel" / "web").iterdir()) == ["1.0.0", "2.0.0", "5.0.0"]


def test_a_broken_app_file_is_named_with_its_reason(env):
    (env.apps_dir / "web.toml").write_text('listen = ["127.0.0.1:8080"]\nexec = "bin/app"\nprobation_sec = "10s"\n')
    env.run(env.manager.load())
    with pytest.raises(ConfigError) as info:
        env.manager.app("web")
    assert str(info.value).startswith("web.toml was not loaded: ")
    assert "key 'probation_sec': must be a number, got string '10s'" in str(info.value)
    assert info.value.hint == "fix the file, then: bloomctl reload"


def test_two_apps_on_one_address_refuse_the_newcomer_naming_both_files(env):
    (env.apps_dir / "api.toml").write_text(APP.format(port=8080, keep=5).replace("127.0.0.1", "0.0.0.0"))
    env.run(env.manager.load())
    assert sorted(env.manager.apps) == ["web"]  # loaded first, it keeps its address
    error = env.manager.app_errors[str(env.apps_dir / "api.toml")]
    assert "listen address 0.0.0.0:8080 clashes with 127.0.0.1:8080 of app 'web'" in error
    assert str(env.apps_dir / "web.toml") in error


def test_reload_warns_about_checks_that_cannot_trip_within_probation(env):
    (env.apps_dir / "web.toml").write_text(
        APP.format(port=8080, keep=5).replace("probation_sec = 0.05", "probation_sec = 10")
        + '[[health_check]]\ntype = "http"\ninterval_sec = 2\n')
    env.run(env.manager.load())
    [warning] = env.manager.app_warnings
    assert "health check http#0 needs up to 13 s to trip (3 failures x (2 s interval + 2 s timeout) + 1 s), " \
           "more than probation_sec = 10" in warning


class FileUpload:
    """A tarball sent with the request, as the control server hands it to the manager."""

    def __init__(self, path):
        self.path = path

    async def copy_to(self, write, limit):
        data = self.path.read_bytes()
        assert len(data) <= limit
        write(data)
        return len(data)


def deploy(env, tarball, **kwargs):
    return env.manager.deploy("web", FileUpload(tarball), tarball.name, None, None, ROOT, **kwargs)


def _tarball(tmp_path, name="web-1.0.0.tar.gz", content=b"#!/bin/sh\n"):
    import io
    import tarfile

    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/app")
        info.mode, info.size = 0o755, len(content)
        tar.addfile(info, io.BytesIO(content))
    return path


def test_deploying_what_is_installed_and_serving_again_is_a_successful_no_op(env):
    tarball = _tarball(env.tmp)
    first = env.run(deploy(env, tarball))
    assert (first["outcome"], first["version"]) == ("done", "1.0.0")
    again = env.run(deploy(env, tarball))
    assert (again["outcome"], again["exit_code"]) == ("unchanged", 0)
    assert again["reason"] == "web 1.0.0 is already installed and serving; nothing to do"
    assert [h["outcome"] for h in env.manager.history("web", 10)][:1] == ["unchanged"]


def test_same_version_other_contents_is_refused_and_installed_not_serving_hints_switch(env):
    first = _tarball(env.tmp)
    env.run(deploy(env, first))
    (env.tmp / "other").mkdir()
    other = _tarball(env.tmp / "other", content=b"#!/bin/sh\necho changed\n")
    with pytest.raises(BloomError, match="web 1.0.0 is already installed with other contents"):
        env.run(env.manager.install("web", FileUpload(other), other.name, None, None, ROOT))
    env.run(deploy(env, _tarball(env.tmp, "web-2.0.0.tar.gz")))
    with pytest.raises(BloomError) as info:
        env.run(deploy(env, first))
    assert str(info.value.message) == "web 1.0.0 is already installed but not serving (current: 2.0.0)"
    assert info.value.hint == "to serve it: bloomctl switch web 1.0.0"


def test_deploy_holds_the_app_from_install_to_the_end_of_the_switch(env, monkeypatch):
    """No other operation slips in between a deploy's install and its switch."""
    import threading

    from bloom_agent.store import releases
    from bloom_agent.errors import Busy

    unpacking, go_on = threading.Event(), threading.Event()
    real_install = releases.install

    def slow_install(*args, **kwargs):
        unpacking.set()
        go_on.wait(10)
        return real_install(*args, **kwargs)

    monkeypatch.setattr(releases, "install", slow_install)
    env.add("0.9.0")

    async def scenario():
        deploying = asyncio.ensure_future(deploy(env, _tarball(env.tmp)))
        await asyncio.to_thread(unpacking.wait, 10)
        with pytest.raises(Busy, match="busy: deploy of web started by root"):
            await env.manager.switch("web", "0.9.0", ROOT)
        go_on.set()
        return await deploying

    assert env.run(scenario())["outcome"] == "done"


def test_reconcile_settles_every_app_a_request_does_not_hold(env):
    (env.apps_dir / "api.toml").write_text(APP.format(port=8081, keep=5))
    env.run(env.manager.load())
    # a stray release of each app runs; a request holds web
    for unit in ("web@0.1.0.service", "api@0.1.0.service"):
        env.run(env.systemd.start(unit))
    held = env.manager._acquire("web", "switch to 1.0.0", "alice")
    env.run(env.manager.reconcile(env.manager.claim_unfinished()))
    assert env.systemd.unit("api@0.1.0.service").active_state == "inactive", "api was reconciled"
    assert env.systemd.unit("web@0.1.0.service").active_state == "active", "web was left to its request"
    env.manager._release("web", held)


def test_a_switch_to_resume_holds_its_app_before_any_request(env):
    env.add("1.0.0", "2.0.0")
    env.switch("1.0.0")
    dep = env.manager.switcher.begin(env.manager.app("web"), "switch", "2.0.0", "root")
    env.store.record_step(dep.id, "probation")
    env.run(env.systemd.start("web@2.0.0.service"))  # where the killed agent had got to
    env.run(env.systemd.stop("web@1.0.0.service"))
    env.store.set_app_state("web", current="2.0.0")
    claimed = env.manager.claim_unfinished()
    assert [(app.name, d.id) for app, d, _ in claimed] == [("web", dep.id)]
    with pytest.raises(BloomError, match=r"busy: switch to 2.0.0 \(resumed\) of web started by bloom-agent"):
        env.switch("1.0.0")
    env.run(env.manager.reconcile(claimed))
    assert env.store.app_state("web")["current"] == "2.0.0"
    assert env.store.unfinished_deployments() == []


def test_an_app_named_like_a_unit_the_agent_did_not_write_is_refused(tmp_path):
    env = Env(tmp_path)
    vendor = tmp_path / "lib"
    vendor.mkdir()
    (vendor / "ssh.service").write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "dbus.socket").write_text("[Socket]\nListenStream=/run/dbus/system_bus_socket\n")
    env.manager.units = UnitWriter(UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run", vendor=(vendor,)))
    for name, port in (("ssh", 9001), ("dbus", 9002)):
        (env.apps_dir / f"{name}.toml").write_text(APP.format(port=port, keep=5))
    env.run(env.manager.load())
    assert sorted(env.manager.apps) == ["web"], "web's own units are marked as the agent's: it stays"
    assert f"the name 'ssh' is taken: {vendor / 'ssh.service'} was not written by bloom-agent" in \
        env.manager.app_errors[str(env.apps_dir / "ssh.toml")]
    assert "dbus.socket was not written by bloom-agent" in env.manager.app_errors[str(env.apps_dir / "dbus.toml")]
    assert (tmp_path / "etc" / "dbus.socket").read_text().startswith("[Socket]"), "left as it was"
    assert not (tmp_path / "etc" / "ssh.socket").exists()


def test_history_keeps_the_newest_deployments_and_those_a_backup_needs(tmp_path):
    from bloom_agent.store.state import StateStore

    store = StateStore(tmp_path / "state.db")
    ids = []
    for i in range(10):
        dep = store.begin_deployment("web", "switch", f"{i}.0.0", None, "starting", "root")
        store.record_step(dep, "probation")
        store.finish_deployment(dep, "done", "done")
        ids.append(dep)
    store.add_backup("web", ids[1], "0.0.0", "/x", 1, "0" * 64, "0" * 64, "2026-12-01T00:00:00+00:00", 0.1)
    in_flight = store.begin_deployment("web", "switch", "10.0.0", None, "starting", "root")
    other = store.begin_deployment("api", "switch", "1.0.0", None, "starting", "root")
    store.finish_deployment(other, "done", "done")
    assert store.prune_history("web", keep=3) == 7  # the newest 3 (one in flight), and the one a backup needs, stay
    kept = [r["id"] for r in store.history("web")]
    assert kept == [in_flight, ids[9], ids[8], ids[1]]
    assert store.steps(ids[0]) == [] and store.steps(ids[9]) != []
    assert [r["id"] for r in store.history("api")] == [other]


def test_reconcile_forgets_an_install_killed_before_its_rename_and_sweeps_a_half_removed_app(env):
    env.add("1.0.0")
    env.switch("1.0.0")
    # Killed between the record and the rename: a record, no directory.
    env.store.add_release("web", "2.0.0", "2.0.0", "0" * 64, 1)
    half_removed = env.tmp / "rel" / ".install-removed-app-old-4242"
    (half_removed / "1.0.0").mkdir(parents=True)
    env.run(env.manager.reconcile([]))
    assert [r["version"] for r in env.store.releases("web")] == ["1.0.0"]
    assert not half_removed.exists()
    assert "forgot 2.0.0, whose install did not finish" in env.store.history("web")[0]["reason"]
