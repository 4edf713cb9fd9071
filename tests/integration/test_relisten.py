"""A changed listen on real systemd: left pending by a reload, applied by 'bloomctl app relisten' the least
disruptive way (an address removed: the others never close, requests keep being answered), and by the
next switch."""

import sys
from pathlib import Path

import pytest

from test_switch import under_load

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sampleapp"))
from make_release import make_release  # noqa: E402

pytestmark = pytest.mark.usefixtures("installed")

APP_FILE = 'listen = [{listen}]\nexec = "bin/sampleapp"\nprobation_sec = 1\nready_timeout_sec = 20\n'


class Api:
    def __init__(self, machine, workdir):
        self.machine, self.host, self.workdir = machine, machine.host, workdir

    def listen(self, *ports: int) -> None:
        addresses = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
        self.host.check_output(f"mkdir -p /etc/bloom/apps && cat > /etc/bloom/apps/api.toml <<'EOF'\n"
                               f"{APP_FILE.format(listen=addresses)}EOF")

    def release(self, version: str) -> str:
        built = make_release(version, self.workdir)
        remote = f"/root/api-{version}.tar.gz"
        self.machine.put(built, remote)
        return remote

    def answer(self, port: int) -> str:
        return self.host.check_output(f"curl -sS --max-time 5 http://127.0.0.1:{port}/")

    def refused(self, port: int) -> bool:
        return self.host.run(f"curl -sS --max-time 5 http://127.0.0.1:{port}/").rc == 7  # could not connect

    def socket_warnings(self) -> int:
        """systemd's warnings about a running socket that lacks descriptors its file asks for."""
        return int(self.host.run("journalctl -u api.socket --no-pager -o cat | grep -c 'not fully functional'")
                   .stdout.strip() or 0)

    def bloomctl(self, *args):
        return self.host.run("bloomctl " + " ".join(args))


@pytest.fixture(scope="module")
def api(machine, tmp_path_factory):
    api = Api(machine, tmp_path_factory.mktemp("api"))
    api.listen(8180)
    api.host.check_output("bloomctl reload")
    out = api.bloomctl("deploy api", api.release("1.0.0"))
    assert out.rc == 0, out.stdout + out.stderr
    yield api
    api.bloomctl("app remove api --yes")


def test_reload_leaves_the_running_socket_alone_and_says_how_a_new_listen_applies(api):
    api.listen(8180, 8181)
    out = api.bloomctl("reload")
    assert out.rc == 0, out.stderr
    assert ("the socket changed (adds 127.0.0.1:8181): it applies at the next switch of api, or now with "
            "'bloomctl app relisten api'") in out.stderr
    assert api.answer(8180) == "sampleapp 1.0.0"
    assert api.refused(8181)


def test_relisten_with_an_added_address_rebinds_and_says_how_long_nothing_listened(api):
    out = api.bloomctl("app relisten api")
    assert out.rc == 0, out.stderr
    assert "api: socket stopped and started again on 127.0.0.1:8180, 127.0.0.1:8181: nothing listened for " \
        in out.stdout, out.stdout
    assert "api@1.0.0.service restarted on it and answered nothing for" in out.stdout
    assert api.host.check_output("systemctl show api.socket -p Listen --value").split() == \
        ["127.0.0.1:8180", "(Stream)", "127.0.0.1:8181", "(Stream)"]
    assert api.answer(8180) == "sampleapp 1.0.0"
    assert api.answer(8181) == "sampleapp 1.0.0"
    again = api.bloomctl("app relisten api")
    assert again.rc == 0 and "nothing to do" in again.stdout


def test_relisten_with_an_address_removed_keeps_answering_on_the_others(api):
    api.listen(8181)
    assert api.bloomctl("reload").rc == 0
    warned = api.socket_warnings()
    # every request during the relisten is answered: none refused, none failed
    out = under_load(api.host, "http://127.0.0.1:8181/", "bloomctl app relisten api", 100)
    assert "api: stopped listening on 127.0.0.1:8180; 127.0.0.1:8181 never closed" in out.stdout, out.stdout
    assert api.refused(8180)
    assert api.answer(8181) == "sampleapp 1.0.0"
    assert api.socket_warnings() == warned  # the socket had everything it needed all along
    history = api.host.check_output("bloomctl history api")
    assert "relisten" in history


def test_the_next_switch_applies_a_pending_listen(api):
    api.listen(8182)
    out = api.bloomctl("reload")
    assert "it applies at the next switch of api" in out.stderr
    assert api.answer(8181) == "sampleapp 1.0.0"
    out = api.bloomctl("deploy api", api.release("1.1.0"))
    assert out.rc == 0, out.stdout + out.stderr
    assert api.answer(8182) == "sampleapp 1.1.0"
    assert api.refused(8181)
    assert api.host.check_output("systemctl show api.socket -p Listen --value").split() == ["127.0.0.1:8182", "(Stream)"]


def test_a_switch_with_an_address_removed_loses_no_request(api):
    api.listen(8182, 8183)
    assert api.bloomctl("reload").rc == 0
    assert api.bloomctl("app relisten api").rc == 0
    api.listen(8183)
    assert "it applies at the next switch of api" in api.bloomctl("reload").stderr
    api.host.check_output("bloomctl install api " + api.release("1.2.0"))
    # the address that stays is served throughout the switch that drops the other
    under_load(api.host, "http://127.0.0.1:8183/", "bloomctl switch api 1.2.0", 100)
    assert api.answer(8183) == "sampleapp 1.2.0"
    assert api.refused(8182)
    assert api.host.check_output("systemctl show api.socket -p Listen --value").split() == ["127.0.0.1:8183", "(Stream)"]
