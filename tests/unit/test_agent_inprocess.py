"""The agent built in-process (main()'s parts handed in): requests over its real control socket, the
app locks, reconcile after a restart, the probation fast path and operations on several apps at once."""

import asyncio

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
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        host.declare("web", 8080, probation=60)
        await host.call("reload")
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "2.0.0"), "wait": False})
        while (await host.call("status", {"app": "web"}))["state"] != "probation":
            await asyncio.sleep(0.02)
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
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "1.0.0")})
        host.declare("web", 8080, probation=60)
        await host.call("reload")
        await host.call("deploy", {"app": "web", "tarball": host.tarball("web", "2.0.0"), "wait": False})
        while (await host.call("status", {"app": "web"}))["state"] != "probation":
            await asyncio.sleep(0.02)
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
