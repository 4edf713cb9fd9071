"""The D-Bus adapter over a real D-Bus broker (dbus-daemon) with a small systemd on it
(tests/unit/dbus_systemd.py). What real systemd does runs in tests/integration."""

import asyncio

import pytest

from bloom_agent.errors import SystemdCallFailed
from bloom_agent.systemd import adapter
from bloom_agent.systemd.adapter import DbusSystemd

import dbus_systemd

pytestmark = pytest.mark.skipif(not dbus_systemd.usable(), reason="needs dbus-daemon (package dbus)")


def run(test):
    """Run ``test(broker, systemd_on_bus, adapter)`` in a fresh loop against a fresh broker."""

    async def main(broker):
        fake = await dbus_systemd.SystemdOnBus(broker.address).connect()
        sd = await DbusSystemd.connect(address=broker.address)
        try:
            async with asyncio.timeout(30):  # a lost signal fails the test instead of hanging it
                await test(broker, fake, sd)
        finally:
            sd.close()
            fake.bus.disconnect()

    with dbus_systemd.broker() as broker:
        asyncio.run(main(broker))


async def _until(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_unit_paths_are_escaped_as_systemd_escapes_them():
    # as `busctl tree org.freedesktop.systemd1` shows them
    assert adapter.unit_path("web@1.2.0.service") == "/org/freedesktop/systemd1/unit/web_401_2e2_2e0_2eservice"
    assert adapter.unit_path("dbus.socket") == "/org/freedesktop/systemd1/unit/dbus_2esocket"
    assert adapter.unit_path("1app.socket") == "/org/freedesktop/systemd1/unit/_31app_2esocket"
    assert adapter.unit_path("a-b_c.service") == "/org/freedesktop/systemd1/unit/a_2db_5fc_2eservice"


def test_a_job_wait_ends_with_its_JobRemoved_signal_and_not_before():
    async def test(broker, fake, sd):
        fake.instant = False
        starting = asyncio.ensure_future(sd.start("web@1.service"))
        await _until(lambda: fake.jobs, "the StartUnit call")
        await asyncio.sleep(0.05)
        assert not starting.done()
        [job] = fake.jobs
        fake.finish(job, "done")
        assert await starting == "done"
        stopping = asyncio.ensure_future(sd.stop("web@1.service"))
        await _until(lambda: fake.jobs, "the StopUnit call")
        fake.finish(next(iter(fake.jobs)), "canceled")
        assert await stopping == "canceled"
        assert sd._jobs == {}

    run(test)


def test_a_job_that_ends_before_its_caller_resumes_is_not_missed():
    async def test(broker, fake, sd):
        fake.instant = True  # JobRemoved right behind the reply, in the same read
        assert await sd.start("web@1.service") == "done"
        assert await sd.stop("web@1.service") == "done"

    run(test)


def test_status_instances_and_metrics_read_the_units_properties():
    async def test(broker, fake, sd):
        fake.unit("web@1.service").update(ActiveState="active", SubState="running", NRestarts=2, MainPID=42,
                                          Result="exit-code", ExecMainStatus=3)
        fake.unit("web@2.service")
        fake.unit("other@1.service")
        status = await sd.status("web@1.service")
        assert status == adapter.UnitStatus("web@1.service", "loaded", "active", "running", "exit-code", 2, 42, 3)
        missing = await sd.status("gone@1.service")
        assert (missing.load_state, missing.active, missing.n_restarts) == ("not-found", False, 0)
        before = len(fake.calls)
        listed = sorted(await sd.instances("web@*.service"), key=lambda s: s.name)
        assert listed == [status, adapter.UnitStatus("web@2.service", "loaded", "inactive", "dead", "success", 0, 0, 0)]
        # the list's states, and each service's four properties: no unit's states read again
        assert sorted(fake.calls[before:]) == ["Get"] * 8 + ["ListUnitsByPatterns"]
        before = len(fake.calls)
        assert await sd.active_states(["web@*.service", "other@*.service"]) == {
            "web@1.service": "active", "web@2.service": "inactive", "other@1.service": "inactive"}
        assert fake.calls[before:] == ["ListUnitsByPatterns"]  # one call for every app, no unit read alone
        # systemd says 2^64-1 when accounting is off: unknown, not a huge number
        assert await sd.unit_metrics("web@1.service") == {"memory": None, "tasks": 3}
        assert await sd.host_stopping() is False

    run(test)


def test_an_error_reply_is_a_SystemdCallFailed_that_names_the_call():
    async def test(broker, fake, sd):
        with pytest.raises(SystemdCallFailed, match=r"KillUnit failed: KillUnit \(org.freedesktop.DBus.Error"):
            await sd._call(adapter.MANAGER_PATH, adapter.MANAGER, "KillUnit", "", [])
        await sd.reset_failed("never-loaded.service")  # nothing to forget: not an error
        await sd.enable("web.socket")
        await sd.disable("web.socket")
        assert fake.calls[-3:] == ["ResetFailedUnit", "EnableUnitFiles", "DisableUnitFiles"]

    run(test)


def test_the_loop_goes_on_while_systemd_is_reloading():
    async def test(broker, fake, sd):
        fake.reload_gate = asyncio.Event()
        reloading = asyncio.ensure_future(sd.daemon_reload())
        await _until(lambda: "Reload" in fake.calls, "the Reload call")
        # Other work, D-Bus calls included, is not held up by the reply the reload waits for.
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0)
            ticks += 1
        assert (await sd.status("web@1.service")).load_state == "not-found"
        assert ticks == 5 and not reloading.done()
        fake.reload_gate.set()
        await reloading

    run(test)


def test_property_matches_are_added_per_waited_unit_and_removed_with_the_last_waiter():
    async def test(broker, fake, sd):
        name = sd._bus.unique_name
        base = await dbus_systemd.match_count(broker.address, name)
        assert sd.matches == 1  # JobRemoved
        fake.unit("web@1.service")
        first = asyncio.ensure_future(sd.wait_for_change("web@1.service", 10))
        second = asyncio.ensure_future(sd.wait_for_change("web@1.service", 10))
        await _until(lambda: "web_401_2eservice" in str(list(sd._watchers)), "the waiters")
        await asyncio.sleep(0.05)
        assert sd.matches == 2
        assert await dbus_systemd.match_count(broker.address, name) == base + 1
        fake.set_state("web@1.service", "active")
        assert await first is True and await second is True
        assert sd.matches == 1
        assert await dbus_systemd.match_count(broker.address, name) == base
        assert await sd.wait_for_change("web@1.service", 0.05) is False  # a timeout removes it too
        assert await dbus_systemd.match_count(broker.address, name) == base

    run(test)


def test_after_the_broker_restarts_calls_work_again_and_waiting_jobs_are_settled():
    async def test(broker, fake, sd):
        fake.instant = False
        fake.unit("web@1.service")
        starting = asyncio.ensure_future(sd.start("web@1.service"))
        await _until(lambda: fake.jobs, "the StartUnit call")
        # The job finishes while the bus is away: its JobRemoved is lost with the connection.
        fake.units["web@1.service"]["ActiveState"] = "active"
        fake.bus.disconnect()
        broker.restart()
        again = await dbus_systemd.SystemdOnBus(broker.address).connect()
        again.units = fake.units
        fake.bus = again.bus
        assert await starting == "done"  # settled from ListJobs and the unit's state
        assert (await sd.status("web@1.service")).active
        # subscriptions came back with the connection
        assert await dbus_systemd.match_count(broker.address, sd._bus.unique_name) == sd.matches
        again.instant = True
        assert await sd.stop("web@1.service") == "done"

    run(test)
