"""A changed listen: left pending by a reload, applied by 'bloomctl app relisten' or the next switch, the
least disruptive way (over the fake systemd; tests/integration/test_relisten.py does it on real systemd)."""

import pytest

from bloom_agent.errors import ListenError
from bloom_agent.systemd.unitfiles import listen_in
from test_appmanager import ROOT, Env

APP = 'listen = [{listen}]\nexec = "bin/app"\nprobation_sec = 0.05\n'


@pytest.fixture
def env(tmp_path):
    env = Env(tmp_path)
    env.write_listen("127.0.0.1:8080")
    env.run(env.manager.load())
    env.add("1.0.0", "1.1.0")
    assert env.switch("1.0.0")["outcome"] == "done"
    env.systemd.calls.clear()
    yield env
    env.loop.close()


def _write_listen(self, *addresses):
    (self.apps_dir / "web.toml").write_text(APP.format(listen=", ".join(f'"{a}"' for a in addresses)))


Env.write_listen = _write_listen


def socket_file(env):
    return (env.tmp / "etc" / "web.socket").read_text()


def relisten(env):
    return env.run(env.manager.relisten("web", ROOT))


def test_reload_leaves_a_socket_in_use_alone_and_says_how_the_change_applies(env):
    env.write_listen("127.0.0.1:8080", "127.0.0.1:8081")
    env.run(env.manager.load())
    assert listen_in(socket_file(env)) == ("127.0.0.1:8080",)
    assert env.systemd.calls == []  # nothing written that systemd would need to reload
    assert any("the socket changed (adds 127.0.0.1:8081): it applies at the next switch of web, or now with "
               "'bloomctl app relisten web'" in w for w in env.manager.app_warnings)


def test_relisten_with_addresses_only_removed_keeps_the_socket_open(env):
    env.write_listen("127.0.0.1:8080", "127.0.0.1:8081")
    env.run(env.manager.load())
    assert relisten(env)["way"] == "rebind"
    env.systemd.calls.clear()
    env.write_listen("127.0.0.1:8081")
    env.run(env.manager.load())
    out = relisten(env)
    assert (out["way"], out["removed"], out["added"]) == ("drop", ["127.0.0.1:8080"], [])
    # never a stop of the socket: a reload drops the address, the release restarts to let go of it
    assert env.systemd.calls == [("daemon-reload", ""), ("stop", "web@1.0.0.service"), ("start", "web@1.0.0.service")]
    assert listen_in(socket_file(env)) == ("127.0.0.1:8081",)
    assert "stopped listening on 127.0.0.1:8080; 127.0.0.1:8081 never closed" in out["text"]
    assert env.manager.history("web", 1)[0]["action"] == "relisten"


def test_relisten_with_an_address_added_rebinds_and_says_for_how_long_nothing_listened(env):
    env.write_listen("127.0.0.1:8080", "127.0.0.1:8081")
    env.run(env.manager.load())
    out = relisten(env)
    assert out["way"] == "rebind" and out["added"] == ["127.0.0.1:8081"]
    assert env.systemd.calls == [("daemon-reload", ""), ("stop", "web@1.0.0.service"), ("stop", "web.socket"),
                                 ("start", "web.socket"), ("start", "web@1.0.0.service")]
    assert out["not_listening_sec"] >= 0 and out["not_answering_sec"] >= out["not_listening_sec"]
    assert "nothing listened for" in out["text"] and "web@1.0.0.service restarted on it" in out["text"]
    env.systemd.calls.clear()
    assert relisten(env)["way"] == "unchanged" and env.systemd.calls == []


def test_a_socket_that_cannot_open_puts_the_old_one_back(env):
    env.write_listen("127.0.0.1:8080", "127.0.0.1:8081")
    env.run(env.manager.load())
    before = socket_file(env)
    env.systemd.start_results["web.socket"] = "failed"

    def socket_back(unit):  # the old socket starts again
        env.systemd.start_results.pop("web.socket", None)

    original = env.systemd.reset_failed

    async def reset_failed(unit):
        socket_back(unit)
        await original(unit)

    env.systemd.reset_failed = reset_failed
    with pytest.raises(ListenError, match="the new socket could not be opened .* the old one listens again on "
                                          "127.0.0.1:8080"):
        relisten(env)
    assert socket_file(env) == before
    assert env.systemd.started("web.socket") and env.systemd.started("web@1.0.0.service")
    assert env.manager.history("web", 1)[0]["outcome"] == "failed"


def test_the_next_switch_applies_a_pending_drop_without_stopping_the_old_release_early(env):
    env.write_listen("127.0.0.1:8080", "127.0.0.1:8081")
    env.run(env.manager.load())
    relisten(env)
    env.write_listen("127.0.0.1:8081")
    env.run(env.manager.load())
    env.systemd.calls.clear()
    assert env.switch("1.1.0")["outcome"] == "done"
    calls = env.systemd.calls
    assert calls.index(("daemon-reload", "")) < calls.index(("start", "web@1.1.0.service")) \
        < calls.index(("stop", "web@1.0.0.service"))
    assert ("stop", "web.socket") not in calls
    assert listen_in(socket_file(env)) == ("127.0.0.1:8081",)


def test_the_next_switch_applies_a_pending_rebind_before_the_new_release_starts(env):
    env.write_listen("127.0.0.1:9090")
    env.run(env.manager.load())
    env.systemd.calls.clear()
    out = env.switch("1.1.0")
    assert out["outcome"] == "done"
    calls = env.systemd.calls
    assert calls[:4] == [("daemon-reload", ""), ("stop", "web@1.0.0.service"), ("stop", "web.socket"),
                         ("start", "web.socket")]
    assert calls[4] == ("start", "web@1.1.0.service")
    assert "socket-closed" in out["timings"]
    assert listen_in(socket_file(env)) == ("127.0.0.1:9090",)


def test_socket_settings_alone_wait_for_relisten_and_a_switch_leaves_them(env):
    """An upgrade's new socket template, or socket_mode, would close the socket: a switch must not."""
    path = env.tmp / "etc" / "web.socket"
    path.write_text(path.read_text().replace("Accept=no\n", "Accept=no\nBacklog=64\n"))  # as an older agent wrote it
    env.run(env.manager.load())
    assert any("the socket changed (changes its other settings): it applies with 'bloomctl app relisten web' "
               "(which closes the socket for a moment)" in w for w in env.manager.app_warnings)
    env.systemd.calls.clear()
    assert env.switch("1.1.0")["outcome"] == "done"
    assert ("stop", "web.socket") not in env.systemd.calls
    assert env.systemd.calls.index(("start", "web@1.1.0.service")) < env.systemd.calls.index(("stop", "web@1.0.0.service"))
    assert "Backlog=64" in socket_file(env)
    assert relisten(env)["way"] == "rebind" and "Backlog" not in socket_file(env)
