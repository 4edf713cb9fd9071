import asyncio
from pathlib import Path

import pytest

from bloom_agent.config.apps import load_app
from bloom_agent.deploy.switcher import Journal, Switcher
from bloom_agent.store.state import StateStore
from bloom_agent.systemd.unitfailure import no_journal
from bloom_agent.systemd.unitfiles import UnitPaths, UnitWriter
from fake_systemd import FakeJournal, FakeSystemd


@pytest.fixture
def env(tmp_path):
    app_file = tmp_path / "web.toml"
    app_file.write_text(f'listen = ["127.0.0.1:8080"]\nexec = "bin/app"\nprobation_sec = 0.3\nreleases_dir = "{tmp_path}/rel"\n')
    app = load_app(app_file)
    store = StateStore(tmp_path / "state.db")
    for v in ("1.0.0", "2.0.0"):
        store.add_release("web", v, v, "0" * 64, 1)
    units = UnitWriter(UnitPaths(etc=tmp_path / "etc", run=tmp_path / "run"))
    systemd = FakeSystemd()
    FakeJournal.entries = []
    return app, store, units, systemd, Switcher(systemd, store, units,
                                                         Journal(monitor=FakeJournal, tail=no_journal))


def deploy(env, version, caller="root"):
    app, store, units, systemd, switcher = env
    dep = switcher.begin(app, "switch", version, caller)
    return dep, asyncio.run(switcher.run(dep))


def steps(store, dep_id):
    return [s["step"] for s in store.steps(dep_id)]


def test_first_deploy_points_socket_and_blesses(env):
    app, store, units, systemd, _ = env
    dep, out = deploy(env, "1.0.0")
    assert (out.outcome, out.exit_code, out.serving) == ("done", 0, "1.0.0")
    assert systemd.calls[:4] == [("daemon-reload", ""), ("enable", "web.socket"), ("start", "web.socket"), ("start", "web@1.0.0.service")]
    assert units.pointed_instance(app) == "1.0.0"
    assert units.dropin(app, "etc").exists() and not units.dropin(app, "run").exists()
    assert store.app_state("web") == {"current": "1.0.0", "last_good": "1.0.0", "degraded": ""}
    assert steps(store, dep.id) == ["starting", "checking", "stopping-old", "pointing", "probation", "blessing", "done"]


def test_switch_starts_new_before_stopping_old_with_one_reload(env):
    app, store, units, systemd, _ = env
    deploy(env, "1.0.0")
    systemd.calls.clear()
    _, out = deploy(env, "2.0.0")
    assert out.outcome == "done" and out.from_version == "1.0.0"
    # The reload comes after OLD is stopped: never between NEW's READY and the moment requests move.
    # The old release is forgotten once stopped, so it never lingers in 'systemctl --failed'.
    assert systemd.calls == [("start", "web@2.0.0.service"), ("stop", "web@1.0.0.service"),
                             ("reset-failed", "web@1.0.0.service"), ("daemon-reload", "")]
    assert store.release("web", "2.0.0")["status"] == "good"
    assert store.app_state("web")["current"] == "2.0.0"


def test_new_release_that_never_gets_ready_leaves_old_serving(env):
    app, store, units, systemd, _ = env
    deploy(env, "1.0.0")
    systemd.start_results["web@2.0.0.service"] = "timeout"
    systemd.calls.clear()
    _, out = deploy(env, "2.0.0")
    assert (out.outcome, out.exit_code, out.serving) == ("failed", 3, "1.0.0")
    assert out.reason.startswith("web@2.0.0.service did not become ready within 30 s (web@2.0.0.service is failed")
    assert out.reason.endswith("; see: journalctl -u web@2.0.0.service")
    assert ("stop", "web@1.0.0.service") not in systemd.calls
    assert systemd.unit("web@1.0.0.service").active_state == "active"
    assert units.pointed_instance(app) == "1.0.0"
    assert store.release("web", "2.0.0")["status"] == "failed"


def test_crash_in_probation_rolls_back_with_reverse_swap(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    systemd.calls.clear()
    dep = switcher.begin(app, "switch", "2.0.0", "root")

    async def crash_later():
        await asyncio.sleep(0.1)
        systemd.crash("web@2.0.0.service")

    async def both():
        crasher = asyncio.ensure_future(crash_later())
        out = await switcher.run(dep)
        await crasher
        return out

    out = asyncio.run(both())
    assert (out.outcome, out.exit_code, out.serving) == ("rolled-back", 3, "1.0.0")
    assert "restarted" in out.reason
    # Reverse swap: old started again before new stopped; the reload only after that.
    tail = [c for c in systemd.calls if c[0] != "reset-failed"][-3:]
    assert tail == [("start", "web@1.0.0.service"), ("stop", "web@2.0.0.service"), ("daemon-reload", "")]
    assert units.pointed_instance(app) == "1.0.0"
    assert store.release("web", "2.0.0")["status"] == "failed"


def test_rollback_that_cannot_start_old_is_degraded_and_keeps_new(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    systemd.start_results["web@1.0.0.service"] = "failed"

    async def run():
        async def crash():
            await asyncio.sleep(0.1)
            systemd.crash("web@2.0.0.service")
        c = asyncio.ensure_future(crash())
        out = await switcher.run(dep)
        await c
        return out

    out = asyncio.run(run())
    assert (out.outcome, out.exit_code) == ("degraded", 4)
    assert systemd.unit("web@2.0.0.service").active_state == "active"
    assert store.app_state("web")["degraded"]


def test_abort_during_probation_is_immediate(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    app_slow = app.__class__(**{**app.__dict__, "probation_sec": 60})
    dep = switcher.begin(app_slow, "switch", "2.0.0", "root")

    async def run():
        async def abort():
            await asyncio.sleep(0.1)
            dep.abort_reason = "rollback requested by root"
            dep.abort.set()
        a = asyncio.ensure_future(abort())
        out = await asyncio.wait_for(switcher.run(dep), 5)
        await a
        return out

    out = asyncio.run(run())
    assert out.outcome == "rolled-back" and out.reason == "rollback requested by root"


@pytest.mark.parametrize("step", ["starting", "checking"])
def test_resume_before_old_stopped_reverts_to_old(env, step):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    store.record_step(dep.id, step)
    asyncio.run(systemd.start("web@2.0.0.service"))  # the killed agent had started it
    row = store.unfinished_deployments()[0]
    out = asyncio.run(switcher.run(switcher.resumed(app, row)))
    assert (out.outcome, out.serving) == ("failed", "1.0.0")
    assert "the agent restarted during step " + step in out.reason
    assert systemd.unit("web@2.0.0.service").active_state == "inactive"
    assert systemd.unit("web@1.0.0.service").active_state == "active"


def test_resume_in_probation_keeps_new(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    asyncio.run(systemd.start("web@2.0.0.service"))
    asyncio.run(systemd.stop("web@1.0.0.service"))
    store.record_step(dep.id, "probation")
    out = asyncio.run(switcher.run(switcher.resumed(app, store.unfinished_deployments()[0])))
    assert (out.outcome, out.serving) == ("done", "2.0.0")
    assert store.unfinished_deployments() == []


def test_cleanup_keeps_current_last_good_and_removes_failed_first(env, tmp_path):
    import asyncio as aio

    from bloom_agent.deploy.manager import AppManager

    app, store, units, systemd, _ = env
    manager = AppManager(tmp_path / "apps", tmp_path / "rel", store, systemd, units)
    small = app.__class__(**{**app.__dict__, "keep_releases": 2})
    for v in ("3.0.0", "4.0.0"):
        store.add_release("web", v, v, "0" * 64, 1)
    for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):
        (small.releases_dir / v).mkdir(parents=True)
    store.set_release_status("web", "3.0.0", "failed", "bad")
    store.set_app_state("web", current="1.0.0", last_good="1.0.0")
    removed = aio.run(manager.cleanup(small))
    assert removed == ["3.0.0", "2.0.0"]
    assert sorted(p.name for p in small.releases_dir.iterdir()) == ["1.0.0", "4.0.0"]
    assert [r["version"] for r in store.releases("web")] == ["1.0.0", "4.0.0"]


def test_error_flood_in_probation_rolls_back(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    FakeJournal.entries = [{"MESSAGE": f"db down {i}", "PRIORITY": 3} for i in range(21)]
    _, out = deploy(env, "2.0.0")
    assert out.outcome == "rolled-back"
    assert out.reason == "probation: journal error rate 21/min > 20/min for web@2.0.0.service; last error: db down 20"


def test_resume_keeps_a_failure_reason_learned_before_the_restart(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    switcher._fail(dep, "web@2.0.0.service did not become ready")
    store.record_step(dep.id, "reverting")
    out = asyncio.run(switcher.run(switcher.resumed(app, store.unfinished_deployments()[0])))
    assert (out.outcome, out.reason) == ("failed", "web@2.0.0.service did not become ready")


def test_resume_after_a_reboot_during_probation_goes_back(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    dep = switcher.begin(app, "switch", "2.0.0", "root")
    store.record_step(dep.id, "probation")
    store._db.execute("UPDATE deployments SET boot_id = 'another-boot' WHERE id = ?", (dep.id,))
    out = asyncio.run(switcher.run(switcher.resumed(app, store.unfinished_deployments()[0])))
    assert (out.outcome, out.serving) == ("rolled-back", "1.0.0")
    assert out.reason == "the host rebooted during step probation; back on the last good release"


def test_host_shutdown_during_probation_is_no_verdict(env):
    app, store, units, systemd, switcher = env
    deploy(env, "1.0.0")
    slow = app.__class__(**{**app.__dict__, "probation_sec": 30})
    dep = switcher.begin(slow, "switch", "2.0.0", "root")

    async def run():
        async def shutdown():
            await asyncio.sleep(0.1)
            systemd.stopping = True
            await systemd.stop("web@2.0.0.service")  # the host stops it
        s = asyncio.ensure_future(shutdown())
        task = asyncio.ensure_future(switcher.run(dep))
        await asyncio.sleep(0.5)
        assert not task.done(), "no rollback started while the host goes down"
        switcher.stopping.set()  # what stopping the agent does
        await s
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(run()) is None, "the deployment is left to the next start"
    assert store.unfinished_deployments()[0]["step"] == "probation"
    assert not systemd.started("web@1.0.0.service") or systemd.calls.count(("start", "web@1.0.0.service")) == 1


def test_failed_first_deploy_retires_the_socket(env):
    app, store, units, systemd, _ = env
    systemd.start_results["web@1.0.0.service"] = "timeout"
    _, out = deploy(env, "1.0.0")
    assert (out.outcome, out.serving) == ("failed", None)
    assert ("disable", "web.socket") in systemd.calls and ("stop", "web.socket") in systemd.calls
    assert units.pointed_instance(app) is None
