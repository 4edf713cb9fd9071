"""The safety promise and failures that explain themselves, on real systemd: what a new user ran into.

A short probation must not bless a release whose health check is failing; a rollback never returns to
a release rolled back; retention keeps the release that served before; and each way a release or an
app file can be wrong says what happened and what to do.
"""

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from test_agent_package import status_json, wait_until
from test_switch import _member, _tar_bytes, make_release, ready_timeout

pytestmark = pytest.mark.usefixtures("installed")

SAFE_FILE = """\
listen = ["127.0.0.1:8082"]
exec = "bin/sampleapp"
probation_sec = {probation}
ready_timeout_sec = {ready}
stop_timeout_sec = 10
keep_releases = {keep}
{extra}"""

# A check that answers within 1 s or fails: 3 x (2 s + 1 s) + 1 s = 10 s to trip, past a 3 s probation.
HTTP_CHECK = """
[[health_check]]
type = "http"
interval_sec = 2
timeout_sec = 1
failures = 3
"""


class Safe:
    """The app 'safe' on the machine; releases of the sample app, or hand-made tarballs."""

    name, port = "safe", 8082

    def __init__(self, machine, workdir: Path) -> None:
        self.machine, self.host, self.workdir = machine, machine.host, workdir
        self.host.check_output("mkdir -p /etc/bloom/apps /root/releases")
        self.configure()

    def configure(self, probation: float = 1, keep: int = 10, extra: str = "") -> str:
        text = SAFE_FILE.format(probation=probation, ready=ready_timeout(self.machine, 5), keep=keep, extra=extra)
        self.host.check_output(f"cat > /etc/bloom/apps/safe.toml <<'EOF'\n{text}EOF")
        out = self.host.run("bloomctl reload")
        assert out.rc == 0, out.stderr
        return out.stderr

    def release(self, version: str, faults: dict | None = None, validate: bool = True) -> str:
        built = make_release(version, self.workdir, faults=faults, validate=validate)
        return self.put(built.read_bytes(), f"safe-{version}.tar.gz")

    def put(self, data: bytes, name: str) -> str:
        local = self.workdir / name
        local.write_bytes(data)
        self.machine.put(local, f"/root/releases/{name}")
        return f"/root/releases/{name}"

    def bloomctl(self, *args: str):
        return self.host.run("bloomctl " + " ".join(args))

    def deploy(self, version: str, faults: dict | None = None):
        return self.bloomctl("deploy safe", self.release(version, faults))

    def serving(self) -> str:
        return self.host.check_output(f"curl -sS --max-time 5 http://127.0.0.1:{self.port}/")

    def status(self) -> dict:
        return status_json(self.host, "safe")

    def releases(self) -> dict[str, str]:
        return {r["version"]: r["status"] for r in json.loads(self.host.check_output("bloomctl releases safe --json"))}


@pytest.fixture(scope="module")
def safe(machine, tmp_path_factory):
    safe = Safe(machine, tmp_path_factory.mktemp("safe"))
    out = safe.deploy("1.0.0")
    assert out.rc == 0, out.stderr
    return safe


def test_a_hanging_health_route_with_a_short_probation_is_rolled_back(safe):
    warning = safe.configure(probation=3, extra=HTTP_CHECK)
    try:
        assert "health check http#0 needs up to 10 s to trip" in warning and "probation_sec = 3" in warning
        # every answer takes 3 s: the check's 1 s timeout fails it each time
        out = safe.deploy("1.1.0", {"slow_response_ms": 3000})
        assert out.rc == 3, out.stdout + out.stderr
        assert "probation: health check http#0 failed 3 times in a row: no answer within 1 s" in out.stderr
        assert safe.serving() == "sampleapp 1.0.0"
        assert safe.releases()["1.1.0"] == "failed"
        log = safe.host.check_output("journalctl -u bloom-agent --no-pager -o cat -n 50")
        assert "probation of 1.1.0 extended by up to" in log
        # a healthy release still passes with the same settings, after its 3 s
        assert safe.deploy("1.2.0").rc == 0
    finally:
        safe.configure()


def test_rollback_after_rollback_never_returns_to_a_rolled_back_release(safe):
    assert safe.deploy("1.3.0").rc == 0
    assert safe.status()["current"] == "1.3.0"
    out = safe.bloomctl("rollback safe")
    assert out.rc == 0, out.stderr
    assert safe.serving() == "sampleapp 1.2.0"
    statuses = safe.releases()
    assert (statuses["1.3.0"], statuses["1.2.0"], statuses["1.0.0"]) == ("rolled-back", "current", "previous")
    out = safe.bloomctl("rollback safe")
    assert out.rc == 0, out.stderr
    assert safe.serving() == "sampleapp 1.0.0"
    out = safe.bloomctl("rollback safe")
    assert out.rc == 1 and "safe has no earlier good release to roll back to" in out.stderr
    # named, a rolled-back release is a valid target
    assert safe.bloomctl("rollback safe --to 1.3.0").rc == 0
    assert safe.releases()["1.3.0"] == "current"


def test_retention_keeps_the_previous_release_and_removes_failed_and_never_run_first(safe):
    # installed now: 1.0.0 (rolled-back), 1.1.0 (failed), 1.2.0 (rolled-back), 1.3.0 (current)
    assert safe.bloomctl("install safe", safe.release("1.4.0")).rc == 0  # never run
    safe.configure(keep=2)
    try:
        out = safe.deploy("1.5.0")
        assert out.rc == 0, out.stderr
        statuses = safe.releases()
        assert statuses["1.5.0"] == "current" and statuses["1.3.0"] == "previous", statuses
        assert "1.1.0" not in statuses and "1.4.0" not in statuses, statuses
        log = safe.host.check_output("journalctl -u bloom-agent --no-pager -o cat -n 30")
        assert "safe: cleaned up old releases 1.0.0, 1.1.0, 1.2.0, 1.4.0" in log
    finally:
        safe.configure()


def test_deploying_the_serving_version_again_is_a_successful_no_op(safe):
    current = safe.status()["current"]
    again = safe.bloomctl("deploy safe", f"/root/releases/safe-{current}.tar.gz")
    assert again.rc == 0, again.stderr
    assert f"safe: {current} is already installed and serving; nothing to do" in again.stdout
    assert safe.status()["current"] == current


def _program(version: str, program: bytes, prefix: str = "") -> bytes:
    return _tar_bytes([_member(f"{prefix}bin/sampleapp", program), _member(f"{prefix}VERSION", f"{version}\n".encode(),
                                                                           mode=0o644)])


@pytest.mark.parametrize("version, program, expected", [
    ("2.0.1", b"#!/bin/sh\necho 'cannot open config' >&2\nexit 2\n",
     r"safe@2\.0\.1\.service exited with status 2 after \d+\.\d s, before it was ready; last lines: .*cannot open config"),
    ("2.0.2", b"#!/bin/sh\nexit 0\n", r"safe@2\.0\.2\.service exited without sending READY=1, after \d+\.\d s"),
    ("2.0.3", b"#!/usr/bin/python3\nimport socket\nsocket.socket().bind(('127.0.0.1', 8082))\n",
     r"Address already in use; the program binds its own port, but safe\.socket already holds it"),
], ids=["exit-status", "no-ready", "binds-own-port"])
def test_a_release_that_exits_at_once_says_how_and_where_to_look(safe, version, program, expected):
    import re

    current = safe.status()["current"]
    out = safe.bloomctl("deploy safe", safe.put(_program(version, program), f"safe-{version}.tar.gz"))
    assert out.rc == 3, out.stdout + out.stderr
    assert re.search(expected, out.stderr), out.stderr
    assert f"see: journalctl -u safe@{version}.service" in out.stderr
    assert safe.serving() == f"sampleapp {current}"
    # what the agent is done with does not linger as failed units (the host would turn 'degraded')
    assert safe.host.check_output("systemctl list-units --failed --no-legend --plain 'safe*'") == ""


def test_a_tarball_packed_with_its_directory_is_refused_naming_the_prefix(safe):
    data = _program("2.1.0", (Path(make_release.__code__.co_filename).parent / "sampleapp.py").read_bytes(),
                    prefix="safe-2.1.0/")
    path = safe.put(data, "safe-2.1.0.tar.gz")
    out = safe.bloomctl("install safe", path)
    assert out.rc == 1
    assert "everything in the tarball is under one directory, 'safe-2.1.0/'" in out.stderr
    assert "tar -czf safe-2.1.0.tar.gz -C safe-2.1.0 ." in out.stderr
    assert "2.1.0" not in safe.releases()
    out = safe.bloomctl("deploy --strip-components 1 safe", path)
    assert out.rc == 0, out.stderr
    assert safe.serving() == "sampleapp 2.1.0"


def test_an_app_file_that_does_not_load_is_named_with_its_reason(safe):
    safe.host.check_output("cp /etc/bloom/apps/safe.toml /root/safe.toml.good && "
                           "sed -i 's/^probation_sec = .*/probation_sec = \"10s\"/' /etc/bloom/apps/safe.toml")
    try:
        assert "not loaded: /etc/bloom/apps/safe.toml: key 'probation_sec'" in safe.bloomctl("reload").stderr
        out = safe.bloomctl("deploy safe", safe.release("2.2.0"))
        assert out.rc == 78, out.stderr
        assert "safe.toml was not loaded: /etc/bloom/apps/safe.toml: key 'probation_sec': must be a number" in out.stderr
        assert "fix the file, then: bloomctl reload" in out.stderr
    finally:
        safe.host.check_output("cp /root/safe.toml.good /etc/bloom/apps/safe.toml && bloomctl reload")


def test_two_apps_on_one_address_are_refused_at_reload(safe):
    safe.host.check_output("printf 'listen = [\"0.0.0.0:8082\"]\\nexec = \"bin/x\"\\n' > /etc/bloom/apps/dup.toml")
    try:
        out = safe.bloomctl("reload")
        assert ("not loaded: /etc/bloom/apps/dup.toml: listen address 0.0.0.0:8082 clashes with 127.0.0.1:8082 of "
                "app 'safe' (/etc/bloom/apps/safe.toml)") in out.stderr
        assert "dup" not in [a["name"] for a in status_json(safe.host)["apps"]]
    finally:
        safe.host.check_output("rm -f /etc/bloom/apps/dup.toml && bloomctl reload")


def test_a_socket_that_cannot_bind_says_why(safe):
    """An address held by something else on the host: the socket's own error reaches the message."""
    safe.host.check_output("systemd-run --unit=port-holder --collect /usr/bin/python3 -c 'import socket, time; "
                           "s = socket.socket(); s.bind((\"127.0.0.1\", 8093)); s.listen(); time.sleep(300)'")
    safe.host.check_output("printf 'listen = [\"127.0.0.1:8093\"]\\nexec = \"bin/sampleapp\"\\n' "
                           "> /etc/bloom/apps/held.toml && bloomctl reload")
    try:
        wait_until(lambda: safe.host.run("bash -c 'exec 3<>/dev/tcp/127.0.0.1/8093'").rc == 0, 10, "the holder")
        built = make_release("1.0.0", safe.workdir / "held")
        safe.machine.put(built, "/root/releases/held-1.0.0.tar.gz")
        out = safe.bloomctl("deploy held /root/releases/held-1.0.0.tar.gz")
        assert out.rc == 3, out.stdout + out.stderr
        assert "cannot start held.socket: held.socket is failed" in out.stderr
        assert "Address already in use" in out.stderr and "see: journalctl -u held.socket" in out.stderr
        assert safe.host.check_output("systemctl list-units --failed --no-legend --plain 'held*'") == ""
    finally:
        safe.host.run("systemctl stop port-holder; rm -f /etc/bloom/apps/held.toml; bloomctl reload")


def test_a_tarball_the_caller_cannot_read_gets_bloomctls_error_form(safe):
    path = safe.release("2.3.0")
    safe.host.check_output(f"id alice || useradd --create-home --groups bloom alice; chmod 600 {path}")
    out = safe.host.run(f"runuser -u alice -- bloomctl install safe {path}")
    assert out.rc == 2, out.stderr
    assert out.stderr.startswith(f"bloomctl: cannot read {path}: permission denied"), out.stderr
    assert "Invalid value" not in out.stderr


def test_ctrl_c_on_a_waiting_switch_detaches_and_the_switch_goes_on(safe):
    path = safe.release("2.4.0")
    safe.configure(probation=6)
    try:
        out = safe.host.run(f"timeout --preserve-status -s INT 4 bloomctl deploy safe {path}")
        assert out.rc == 130, out.stdout + out.stderr
        assert "bloomctl: detached; the switch continues in the agent" in out.stderr
        assert "follow it: bloomctl status safe; abort it: bloomctl rollback safe" in out.stderr
        wait_until(lambda: safe.status()["state"] == "serving", 30, "the switch to finish")
        assert safe.status()["current"] == "2.4.0"
    finally:
        safe.configure()


ODD_FILE = r'''listen = ["127.0.0.1:8095"]
exec = 'bin/sampleapp --name "a b" --spec %h --var $HOME --slash back\\slash --quote "q\"d" --semi ";"'
environment = { GREETING = 'hello %h $HOME "q" back\slash ;', EMPTY = "" }
'''
DUMP = """#!/usr/bin/python3
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in ("GREETING", "EMPTY")}}))
"""


def test_hostile_values_reach_the_program_exactly_as_given(safe):
    """Quotes, spaces, %specifiers, $variables, backslashes and ';' in exec and environment: the
    program systemd starts receives exactly what the app file says (exec split as shlex splits it)."""
    import shlex
    import tomllib

    release = "/var/lib/bloom/releases/odd/1"
    safe.host.check_output(f"cat > /etc/bloom/apps/odd.toml <<'EOF'\n{ODD_FILE}EOF\nbloomctl reload && "
                           f"mkdir -p {release}/bin && cat > {release}/bin/sampleapp <<'EOF'\n{DUMP}EOF\n"
                           f"chmod 755 {release}/bin/sampleapp")
    # the socket names a release, as a deploy would leave it
    safe.host.check_output("mkdir -p /etc/systemd/system/odd.socket.d && printf '[Socket]\\nService=odd@1.service\\n' "
                           "> /etc/systemd/system/odd.socket.d/50-bloom-release.conf && systemctl daemon-reload")
    try:
        safe.host.run("systemctl start odd@1.service")  # it prints and exits without READY=1: that is all we need
        wait_until(lambda: safe.host.run("journalctl -u odd@1.service -o cat --no-pager | grep -q argv").rc == 0,
                   20, "the program's output")
        line = next(x for x in safe.host.check_output("journalctl -u odd@1.service -o cat --no-pager").splitlines()
                    if x.startswith('{"argv"'))
        got = json.loads(line)
        declared = tomllib.loads(ODD_FILE)
        assert got["argv"] == shlex.split(declared["exec"])[1:]
        assert got["env"] == declared["environment"]
    finally:
        safe.host.run("systemctl stop odd@1.service odd.socket; systemctl reset-failed 'odd*'; "
                      f"rm -rf /etc/bloom/apps/odd.toml /etc/systemd/system/odd.socket /etc/systemd/system/odd@.service "
                      "/etc/systemd/system/odd.socket.d "
                      "/var/lib/bloom/releases/odd; bloomctl reload")


def test_forged_journal_entries_cannot_roll_a_release_back(safe):
    """Any local user may log UNIT=, MESSAGE_ID= and odd priorities; only journald's own fields count."""
    safe.configure(probation=4)
    forge = ("import sys; from systemd import journal\n"
             "for i in range(40):\n"
             "    journal.send(f'forged {i}', UNIT=sys.argv[1], PRIORITY='3')\n"
             "    journal.send('Suppressed 500 messages from ' + sys.argv[1], UNIT=sys.argv[1],\n"
             "                 MESSAGE_ID='a596d6fe7bfa4994828e72309e95d61e', PRIORITY='6')\n"
             "    journal.send(f'odd {i}', UNIT=sys.argv[1], PRIORITY='err')\n")
    try:
        safe.host.check_output("id mallory || useradd --create-home mallory")
        safe.host.check_output(f"cat > /tmp/forge.py <<'EOF'\n{forge}EOF")
        started = safe.host.run(f"bloomctl deploy --no-wait safe {safe.release('2.5.0')}")
        assert started.rc == 0, started.stderr
        wait_until(lambda: safe.status()["state"] == "probation", 20, "probation to begin")
        safe.host.check_output("runuser -u mallory -- python3 /tmp/forge.py safe@2.5.0.service")
        wait_until(lambda: safe.status()["state"] == "serving", 30, "the switch to finish")
        assert safe.status()["current"] == "2.5.0", safe.host.check_output("bloomctl history safe | head -3")
    finally:
        safe.configure()


def test_an_app_named_like_a_system_unit_is_refused_and_the_unit_left_alone(safe):
    import re

    before = safe.host.check_output("systemctl cat ssh.service | md5sum")
    safe.host.check_output("printf 'listen = [\"127.0.0.1:8096\"]\\nexec = \"bin/x\"\\n' > /etc/bloom/apps/ssh.toml")
    try:
        out = safe.bloomctl("reload")
        assert re.search(r"not loaded: /etc/bloom/apps/ssh.toml: the name 'ssh' is taken: "
                         r"/(usr/)?lib/systemd/system/ssh(\.socket|\.service|@\.service) was not written by bloom-agent",
                         out.stderr), out.stderr
        assert not safe.host.file("/etc/systemd/system/ssh.socket").exists
        assert safe.host.check_output("systemctl cat ssh.service | md5sum") == before
    finally:
        safe.host.check_output("rm -f /etc/bloom/apps/ssh.toml && bloomctl reload")


def test_show_wait_logs_and_status_codes_on_real_systemd(safe):
    safe.configure(probation=3)
    try:
        started = safe.host.run(f"bloomctl deploy --no-wait safe {safe.release('2.6.0')}")
        assert started.rc == 0, started.stderr
        waited = safe.host.run("bloomctl wait safe")
        assert waited.rc == 0, waited.stderr
        assert "safe: " in waited.stdout and "-> 2.6.0: done" in waited.stdout
        assert "blessing: 2.6.0" in waited.stderr
        shown = json.loads(safe.host.check_output("bloomctl show safe --json"))
        assert shown["version"] == "2.6.0" and [s["step"] for s in shown["steps"]][-2:] == ["blessing", "done"]
        logs = safe.host.run("bloomctl logs safe 2.6.0 -n 20 -o cat")
        assert logs.rc == 0 and "sampleapp 2.6.0" in logs.stdout, logs.stdout + logs.stderr
        assert safe.host.run("bloomctl status safe").rc == 0
        safe.host.check_output("systemctl kill --signal=SIGKILL safe@2.6.0.service && systemctl stop safe@2.6.0.service")
        assert safe.host.run("bloomctl status safe").rc == 3, "no release running: not serving"
        safe.host.check_output("systemctl start safe@2.6.0.service")
        wait_until(lambda: safe.host.run("bloomctl status safe").rc == 0, 20, "serving again")
    finally:
        safe.configure()


def test_journal_events_carry_ids_and_fields_and_the_catalog_explains_them(safe):
    from bloom_agent.deploy import events

    def entries(**match):
        query = " ".join(f"{k}={v}" for k, v in match.items())
        return [json.loads(line) for line in safe.host.check_output(f"journalctl -o json --no-pager {query}").splitlines()]

    blessed = entries(MESSAGE_ID=events.BLESSED, BLOOM_APP="safe")
    assert "1.2.0" in {e["BLOOM_VERSION"] for e in blessed}, "the healthy release of the first test"
    assert all(e["_SYSTEMD_UNIT"] == "bloom-agent.service" and e["BLOOM_DEPLOYMENT"].isdigit() for e in blessed)
    rolled = entries(MESSAGE_ID=events.ROLLED_BACK, BLOOM_APP="safe", BLOOM_VERSION="1.1.0")
    assert rolled and rolled[0]["BLOOM_TRIGGER"] == "health-check" and rolled[0]["PRIORITY"] == "3"
    for message_id in (events.STARTED, events.SWITCHED, events.INSTALLED, events.REMOVED):
        assert entries(MESSAGE_ID=message_id, BLOOM_APP="safe"), message_id
    story = safe.host.check_output("journalctl --no-pager -o cat BLOOM_APP=safe BLOOM_VERSION=1.1.0")
    assert "safe: switch 1.0.0 -> 1.1.0 started by root" in story and "rolled-back" in story
    listed = safe.host.check_output(f"journalctl --list-catalog {events.ROLLED_BACK}")
    assert "was rolled back" in listed, listed


def test_metrics_reach_prometheus_node_exporter(safe):
    """The agent's textfile, as Debian's node_exporter serves it (scraped inside the machine)."""
    import re

    current = safe.status()["current"]
    safe.host.check_output("systemctl start prometheus-node-exporter")
    try:
        def scrape():
            out = safe.host.run("curl -sS --max-time 5 http://127.0.0.1:9100/metrics")
            return out.stdout if out.rc == 0 and "bloom_agent_up 1" in out.stdout else ""

        metrics = wait_until(scrape, 30, "node_exporter to serve the agent's metrics")
        assert f'bloom_app_release_info{{app="safe",version="{current}"}} 1' in metrics
        assert 'bloom_app_state{app="safe",state="serving"} 1' in metrics
        history = json.loads(safe.host.check_output("bloomctl history safe --limit 1000 --json"))
        rolled = sum(1 for h in history if h["outcome"] in ("rolled-back", "failed") and h["action"] == "switch"
                     and h["reason"].startswith("probation: health check"))
        if rolled:  # the module's first test has one; alone, this test may run without
            assert f'bloom_rollbacks_total{{app="safe",trigger="health-check"}} {rolled}' in metrics
        assert re.search(r'bloom_deployments_total\{action="switch",app="safe",outcome="done"\} [1-9]', metrics)
        assert 'bloom_deployment_duration_seconds_bucket{action="switch",app="safe",outcome="done",le="+Inf"}' in metrics
        assert 'node_textfile_scrape_error 0' in metrics
    finally:
        safe.host.run("systemctl stop prometheus-node-exporter")


def _exposure(host, unit: str) -> float:
    import re

    out = host.run(f"systemd-analyze security --no-pager {unit}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert found, out.stdout + out.stderr
    return float(found[1])


def test_release_units_are_sandboxed_to_an_exposure_of_at_most_3_5(safe):
    """systemd's own measure of the generated unit, for a release that runs (a plain unit scores 9.6)."""
    unit = f"safe@{safe.status()['current']}.service"
    exposure = _exposure(safe.host, unit)
    print(f"\n{unit}: exposure {exposure}; bloom-agent.service: {_exposure(safe.host, 'bloom-agent.service')}")
    assert exposure <= 3.5
    assert safe.serving().startswith("sampleapp "), "the release runs under its sandbox"


def test_app_remove_leaves_nothing_of_the_app(safe):
    safe.host.check_output("printf 'listen = [\"127.0.0.1:8097\"]\\nexec = \"bin/sampleapp\"\\nprobation_sec = 1\\n' "
                           "> /etc/bloom/apps/gone.toml && bloomctl reload")
    built = make_release("1.0.0", safe.workdir / "gone")
    safe.machine.put(built, "/root/releases/gone-1.0.0.tar.gz")
    out = safe.bloomctl("deploy gone /root/releases/gone-1.0.0.tar.gz")
    assert out.rc == 0, out.stderr
    assert safe.host.check_output("curl -sS --max-time 5 http://127.0.0.1:8097/") == "sampleapp 1.0.0"
    removed = safe.bloomctl("app remove --yes gone")
    assert removed.rc == 0, removed.stderr
    assert "removed gone (gone@1.0.0.service; /etc/bloom/apps/gone.toml deleted)" in removed.stdout
    assert safe.host.check_output("systemctl list-units --all --no-legend --plain 'gone*'") == ""
    for path in ("/etc/systemd/system/gone.socket", "/etc/systemd/system/gone@.service",
                 "/etc/systemd/system/gone.socket.d", "/var/lib/bloom/releases/gone", "/etc/bloom/apps/gone.toml"):
        assert not safe.host.file(path).exists, path
    assert safe.host.run("curl -sS --max-time 5 http://127.0.0.1:8097/").rc != 0, "the socket is closed"
    assert safe.bloomctl("status gone").rc == 1
    assert safe.bloomctl("status safe").rc == 0, "the other apps go on"


def test_a_version_that_is_not_semantic_and_check_config_of_app_files(safe):
    """A timestamp version, read from the file name, becomes a unit and a directory; --check-config
    reads the app files as the running agent does."""
    built = safe.release("2.7.0")  # the sample app's files; the name below gives the version
    safe.host.check_output(f"cp {built} /root/releases/safe-20261201-1530.tar.gz")
    out = safe.bloomctl("deploy safe /root/releases/safe-20261201-1530.tar.gz")
    assert out.rc == 0, out.stderr
    assert safe.status()["running"] == ["safe@20261201-1530.service"]
    assert safe.host.file("/var/lib/bloom/releases/safe/20261201-1530").is_directory
    checked = safe.host.run("bloom-agent --check-config")
    assert checked.rc == 0 and "/etc/bloom/apps/safe.toml: OK" in checked.stdout, checked.stdout + checked.stderr


def test_the_agent_reconnects_when_the_system_bus_restarts(safe):
    """The broker drops every client when it restarts: the agent opens a new connection, with its
    subscriptions, instead of failing its next call (or dying in its metrics writer)."""
    pid = safe.host.check_output("systemctl show -P MainPID bloom-agent").strip()
    safe.host.check_output("systemctl restart dbus.service")
    wait_until(lambda: safe.bloomctl("status safe").rc == 0, 30, "bloomctl status after the bus restart")
    assert safe.deploy("2.8.0").rc == 0, "a switch after the bus restart"
    assert safe.serving() == "sampleapp 2.8.0"
    assert safe.host.check_output("systemctl show -P MainPID bloom-agent").strip() == pid, "the agent did not restart"
    log = safe.host.check_output("journalctl -u bloom-agent --no-pager -o cat -n 200")
    assert "the D-Bus connection to systemd was lost" in log and "connecting again" in log


def test_secrets_from_an_environment_file_and_a_credential_reach_the_release_but_no_unit_text(safe):
    safe.host.check_output("umask 077 && printf 'API_TOKEN=hunter2\\n' > /etc/bloom/safe.env "
                           "&& printf 's3cret-db' > /etc/bloom/safe-db.secret")
    warning = safe.configure(extra='environment_files = ["/etc/bloom/safe.env"]\n'
                                   'credentials = { db_password = "/etc/bloom/safe-db.secret" }\n')
    try:
        assert "readable by others" not in warning
        assert safe.deploy("2.9.0").rc == 0
        unit = "safe@2.9.0.service"
        pid = safe.host.check_output(f"systemctl show -P MainPID {unit}").strip()
        assert "API_TOKEN=hunter2" in safe.host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
        assert safe.host.check_output(f"cat /run/credentials/{unit}/db_password") == "s3cret-db"
        shown = safe.host.check_output(f"systemctl show {unit}; cat /etc/systemd/system/safe@.service")
        assert "hunter2" not in shown and "s3cret-db" not in shown
        safe.host.check_output("chmod 644 /etc/bloom/safe.env")
        out = safe.host.run("bloomctl reload")
        assert "/etc/bloom/safe.env is readable by others (mode 0644)" in out.stderr
    finally:
        safe.configure()


def test_a_tarball_with_a_gigantic_header_is_refused_without_reading_it(safe):
    """A few KB of gzip holding a 64 MiB PAX header: refused when the header is announced."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bin/sampleapp")
        info.pax_headers = {"comment": "x" * (64 * 1024 * 1024)}
        info.mode, info.size = 0o755, 3
        tar.addfile(info, io.BytesIO(b"#!x"))
    assert len(buf.getvalue()) < 1024 * 1024
    out = safe.bloomctl("install safe", safe.put(buf.getvalue(), "safe-9.0.0.tar.gz"))
    assert out.rc == 1 and "extended header of" in out.stderr and "refused before reading it" in out.stderr
    assert "9.0.0" not in safe.releases()
    assert safe.status()["serving"]


def test_an_agent_killed_between_an_installs_record_and_its_rename_forgets_it_and_installs_it_again(safe):
    from test_agent_package import show
    from test_switch import agent_failpoints

    tarball = safe.release("3.1.0")
    with agent_failpoints(safe.host):
        pid = show(safe.host, "bloom-agent", "MainPID")["MainPID"]
        safe.host.check_output("echo install-recorded > /run/bloom-failpoint")
        out = safe.bloomctl("install safe", tarball)
        assert out.rc == 1, "the agent should have died under bloomctl"
        wait_until(lambda: show(safe.host, "bloom-agent", "MainPID")["MainPID"] not in ("0", pid), 30, "the restart")
        wait_until(lambda: safe.bloomctl("status safe").rc == 0, 30, "the agent to answer")
        wait_until(lambda: "3.1.0" not in safe.releases(), 30, "the unfinished install to be forgotten")
        assert not safe.host.file("/var/lib/bloom/releases/safe/3.1.0").exists
        out = safe.bloomctl("install safe", tarball)
        assert out.rc == 0, out.stderr
        assert safe.releases()["3.1.0"] == "installed"
