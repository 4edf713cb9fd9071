"""The app socket on real systemd: descriptors named after the app, FreeBind, and a Unix socket's owner
and mode as the app file says."""

import shlex
import sys
from pathlib import Path

import pytest

from test_agent_package import show

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "sampleapp"))
from make_release import make_release  # noqa: E402

pytestmark = pytest.mark.usefixtures("installed")

# 192.0.2.10 is TEST-NET-1: the machine does not have it, so only FreeBind lets the socket bind it.
APP_FILE = """\
listen = ["127.0.0.1:8190", "192.0.2.10:8191", "/run/sockapp/http.sock"]
exec = "bin/sampleapp"
probation_sec = 1
ready_timeout_sec = 20
socket_user = "sockowner"
socket_group = "bloom"
socket_mode = "0660"
"""


@pytest.fixture(scope="module")
def sockapp(machine, tmp_path_factory):
    host = machine.host
    host.check_output("id sockowner || useradd --system --no-create-home sockowner")
    host.check_output(f"mkdir -p /etc/bloom/apps && cat > /etc/bloom/apps/sockapp.toml <<'EOF'\n{APP_FILE}EOF")
    host.check_output("bloomctl reload")
    machine.put(make_release("1.0.0", tmp_path_factory.mktemp("sockapp")), "/root/sockapp-1.0.0.tar.gz")
    out = host.run("bloomctl deploy sockapp /root/sockapp-1.0.0.tar.gz")
    assert out.rc == 0, out.stdout + out.stderr
    yield host
    host.run("bloomctl app remove sockapp --yes")


def test_the_socket_as_systemd_loaded_it(sockapp):
    props = show(sockapp, "sockapp.socket", "FreeBind", "FileDescriptorName", "SocketMode", "SocketUser",
                 "SocketGroup", "ActiveState")
    assert props == {"FreeBind": "yes", "FileDescriptorName": "sockapp", "SocketMode": "0660",
                     "SocketUser": "sockowner", "SocketGroup": "bloom", "ActiveState": "active"}


def test_the_unix_socket_on_disk_has_the_owner_and_mode_of_the_app_file(sockapp):
    assert sockapp.check_output("stat -c '%F %U %G %a' /run/sockapp/http.sock") == "socket sockowner bloom 660"
    assert sockapp.check_output("curl -sS --max-time 5 --unix-socket /run/sockapp/http.sock http://x/") == \
        "sampleapp 1.0.0"
    # a user who is neither its owner nor in its group may not connect
    denied = sockapp.run("setpriv --reuid=4242 --regid=4242 --clear-groups "
                         "curl -sS --max-time 5 --unix-socket /run/sockapp/http.sock http://x/")
    assert denied.rc == 7, denied.stdout + denied.stderr  # curl: could not connect


def test_an_address_the_host_does_not_have_is_bound_and_every_descriptor_is_named(sockapp):
    assert sockapp.check_output("curl -sS --max-time 5 http://127.0.0.1:8190/") == "sampleapp 1.0.0"
    listening = sockapp.check_output("ss -Hltn 'sport = :8191'")
    assert "192.0.2.10:8191" in listening
    pid = show(sockapp, "sockapp@1.0.0.service", "MainPID")["MainPID"]
    environ = sockapp.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "LISTEN_FDS=3" in environ.splitlines()
    assert "LISTEN_FDNAMES=sockapp:sockapp:sockapp" in environ.splitlines()


# Every unit the package ships and the agent writes, checked by systemd itself (CI runs this suite).
SHIPPED = ("bloom-agent.service", "bloom-agent.socket")
# systemd 252 reads --threshold on a scale of 0 to 100: ten times the exposure it prints (8.3 is 83).
# The agent's own unit: docs/security.md's measure (8.1 loaded; offline, without the manager's defaults,
# 8.3). A release unit: at most 3.5, issue 8's bound (it scores 1.7 offline).
THRESHOLDS = {"bloom-agent.service": 83, "sockapp@.service": 35}


def test_systemd_analyze_verify_finds_nothing_in_the_units_shipped_and_written(sockapp):
    shipped = [show(sockapp, unit, "FragmentPath")["FragmentPath"] for unit in SHIPPED]
    # The written socket with every socket key, and the template as a release instance of it.
    units = [*shipped, "/etc/systemd/system/sockapp.socket", "sockapp@1.0.0.service"]
    # man(1) is not in the test machine: the pages Documentation= names are looked for in the package.
    out = sockapp.run("systemd-analyze verify --man=no " + " ".join(units))
    assert (out.rc, out.stderr.strip()) == (0, ""), out.stdout + out.stderr
    files = sockapp.check_output("dpkg -L bloom-agent").splitlines()
    for unit in (*SHIPPED, "sockapp.socket", "sockapp@1.0.0.service"):
        for doc in shlex.split(show(sockapp, unit, "Documentation")["Documentation"]):
            if doc.startswith("man:"):
                name, section = doc[4:].rstrip(")").split("(")
                assert f"/usr/share/man/man{section}/{name}.{section}.gz" in files, f"{unit}: {doc}"
            else:
                assert sockapp.file(doc.removeprefix("file://")).is_file, f"{unit}: {doc}"


def test_systemd_analyze_security_offline_keeps_each_service_within_its_threshold(sockapp):
    paths = {"bloom-agent.service": show(sockapp, "bloom-agent.service", "FragmentPath")["FragmentPath"],
             "sockapp@.service": "/etc/systemd/system/sockapp@.service"}
    for unit, threshold in THRESHOLDS.items():
        out = sockapp.run(f"systemd-analyze security --no-pager --offline=true --threshold={threshold} {paths[unit]}")
        assert out.rc == 0, f"{unit} over {threshold / 10}:\n{out.stdout}{out.stderr}"
    # and the threshold bites: the release unit is above 1.0
    over = sockapp.run(f"systemd-analyze security --no-pager --offline=true --threshold=10 {paths['sockapp@.service']}")
    assert over.rc != 0 and "Overall exposure level for sockapp@i.service" in over.stdout


def test_a_changed_socket_mode_waits_for_relisten_which_applies_it(sockapp):
    sockapp.check_output("sed -i 's/^socket_mode = .*/socket_mode = \"0600\"/' /etc/bloom/apps/sockapp.toml")
    out = sockapp.run("bloomctl reload")
    assert out.rc == 0, out.stderr
    assert ("the socket changed (changes its other settings): it applies with 'bloomctl app relisten sockapp' "
            "(which closes the socket for a moment)") in out.stderr
    assert sockapp.check_output("stat -c '%a' /run/sockapp/http.sock") == "660"
    out = sockapp.run("bloomctl app relisten sockapp")
    assert out.rc == 0 and "socket stopped and started again on" in out.stdout, out.stdout + out.stderr
    assert sockapp.check_output("stat -c '%U %G %a' /run/sockapp/http.sock") == "sockowner bloom 600"
    assert show(sockapp, "sockapp.socket", "SocketMode")["SocketMode"] == "0600"
    assert sockapp.check_output("curl -sS --max-time 5 --unix-socket /run/sockapp/http.sock http://x/") == \
        "sampleapp 1.0.0"
