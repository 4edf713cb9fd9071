"""Automatic rollback on real systemd: each probation monitor trips on the sample app's faults."""

import json
import re
import time

import pytest

from test_agent_package import status_json, show, wait_until
from test_switch import App, agent_failpoints, ready_timeout, start_load, stop_load

pytestmark = pytest.mark.usefixtures("installed")

API_FILE = """\
listen = ["127.0.0.1:8081"]
exec = "bin/sampleapp"
probation_sec = {probation}
ready_timeout_sec = {ready}
stop_timeout_sec = 10
watchdog_sec = 2
max_error_rate_per_minute = 20
error_patterns = {patterns}
on_switch = ["cat > /tmp/hook-switch.json"]
on_rollback = ["cat > /tmp/hook-rollback.json"]
on_rollback_failure = ["cat > /tmp/hook-rollback-failure.json"]
{top}
[[health_check]]
type = "http"
interval_sec = 0.5
failures = 3
max_response_time_ms = 1000

[[health_check]]
type = "memory"
memory_threshold_bytes = {memory}

[[health_check]]
type = "tasks"
max_tasks = {tasks}
"""


class Api(App):
    name, port = "api", 8081

    def __init__(self, machine, workdir):
        self.machine, self.host, self.workdir = machine, machine.host, workdir
        self.host.check_output("mkdir -p /etc/bloom/apps /root/releases")
        self.configure()

    def configure(self, probation: float = 6, patterns: str = "[]", memory: int = 2**30, tasks: int = 200,
                  extra: str = "", top: str = "") -> None:
        """Write the app file: ``top`` goes among the top-level keys, ``extra`` at the end (tables)."""
        text = API_FILE.format(probation=probation, patterns=patterns, memory=memory, tasks=tasks,
                               ready=ready_timeout(self.machine, 5), top=top) + extra
        self.host.check_output(f"cat > /etc/bloom/apps/api.toml <<'EOF'\n{text}EOF")
        self.host.check_output("bloomctl reload")

    def release(self, version, faults=None):
        from make_release import make_release

        built = make_release(version, self.workdir, faults=faults)
        remote = f"/root/releases/api-{version}.tar.gz"
        self.machine.put(built, remote)
        return remote

    def serving(self) -> str:
        return self.host.check_output("curl -sS --max-time 5 http://127.0.0.1:8081/")

    def status(self) -> dict:
        return status_json(self.host, "api")

    def running(self):
        out = self.host.check_output("systemctl list-units --no-legend --plain --state=active,activating 'api@*.service'")
        return sorted(line.split()[0] for line in out.splitlines() if line.strip())

    def history(self):
        return json.loads(self.host.check_output("bloomctl history api --json"))

    def releases(self):
        return {r["version"]: r for r in json.loads(self.host.check_output("bloomctl releases api --json"))}

    def deploy(self, version, faults=None, extra=""):
        began = time.monotonic()
        out = self.host.run(f"bloomctl deploy {extra} api {self.release(version, faults)}")
        return out, time.monotonic() - began


@pytest.fixture(scope="module")
def api(machine, tmp_path_factory):
    api = Api(machine, tmp_path_factory.mktemp("api"))
    out, _ = api.deploy("1.0.0")
    assert out.rc == 0, out.stderr
    return api


@pytest.mark.parametrize("faults, reason", [
    ({"crash_after_sec": 1}, "probation: crash: api@2.0.1.service"),
    ({"stop_watchdog_after_sec": 1}, "probation: watchdog: api@2.0.2.service missed its watchdog ping"),
    ({"error_log_per_sec": 10}, "probation: journal error rate 21/min > 20/min for api@2.0.3.service; last error: "
                                "sampleapp 2.0.3: simulated error #21"),
    ({"fail_health": True}, "probation: health check http#0 failed 3 times in a row: HTTP 500"),
    ({"slow_response_ms": 1500}, "probation: health check http#0 failed 3 times in a row"),
], ids=["crash", "watchdog", "error-rate", "http-status", "response-time"])
def test_each_trigger_rolls_back_with_exit_3(api, faults, reason):
    version = {"crash_after_sec": "2.0.1", "stop_watchdog_after_sec": "2.0.2", "error_log_per_sec": "2.0.3",
               "fail_health": "2.0.4", "slow_response_ms": "2.0.5"}[next(iter(faults))]
    current = api.status()["current"]
    out, _ = api.deploy(version, faults)
    assert out.rc == 3, out.stdout + out.stderr
    assert reason in out.stderr
    assert api.serving() == f"sampleapp {current}"
    assert api.running() == [f"api@{current}.service"]
    assert api.releases()[version]["status"] == "failed"
    record = api.history()[0]
    assert (record["outcome"], record["version"]) == ("rolled-back", version)
    assert reason in record["reason"]
    hook = json.loads(api.host.check_output("cat /tmp/hook-rollback.json"))
    assert (hook["event"], hook["version"], hook["outcome"]) == ("rollback", version, "rolled-back")


def test_release_dead_before_probation_begins_is_rolled_back(api):
    """NEW crashes while the agent is still between steps (on a slow host, in the daemon-reload; here a
    pause before probation): probation's first look finds it dead, and its other monitors
    (instant memory and tasks checks among them) must stop for the rollback to go on."""
    current = api.status()["current"]
    with agent_failpoints(api.host):
        api.host.check_output("echo 'probation pause 3' > /run/bloom-failpoint")
        # exit 0: Restart=on-failure leaves it stopped, so the first look surely finds it dead
        out, _ = api.deploy("2.0.6", {"crash_after_sec": 1, "crash_exit_code": 0})
        assert not api.host.file("/run/bloom-failpoint").exists, "the failpoint was hit"
    assert out.rc == 3, out.stdout + out.stderr
    assert "probation: crash: api@2.0.6.service" in out.stderr
    assert api.serving() == f"sampleapp {current}"
    assert api.running() == [f"api@{current}.service"]
    assert api.history()[0]["outcome"] == "rolled-back"


def test_error_patterns_catch_errors_logged_at_info(api):
    api.configure(patterns='["simulated warning"]')
    try:
        out, _ = api.deploy("2.1.0", {"warn_log_per_sec": 10})
        assert out.rc == 3
        assert "journal error rate 21/min > 20/min" in out.stderr and "simulated warning" in out.stderr
    finally:
        api.configure()


def test_healthy_release_with_warnings_and_one_slow_request_stays(api):
    out, _ = api.deploy("2.2.0", {"warn_log_per_sec": 5, "slow_first_request_ms": 1500})
    assert out.rc == 0, out.stderr
    assert api.serving() == "sampleapp 2.2.0"
    assert api.releases()["2.2.0"]["status"] == "current"
    assert json.loads(api.host.check_output("cat /tmp/hook-switch.json"))["version"] == "2.2.0"


def test_log_rate_limit_reaches_the_release_unit(api):
    api.configure(top="log_rate_limit_interval_sec = 10\nlog_rate_limit_burst = 50000\n")
    try:
        out, _ = api.deploy("2.2.1")
        assert out.rc == 0, out.stderr
        # what journald applies to the release's lines (its own defaults: 30 s, 10000)
        assert show(api.host, "api@2.2.1.service", "LogRateLimitIntervalUSec", "LogRateLimitBurst") == {
            "LogRateLimitIntervalUSec": "10s", "LogRateLimitBurst": "50000"}
    finally:
        api.configure()


def test_no_request_fails_during_automatic_rollback_under_load(api):
    current = api.status()["current"]
    start_load(api.host, "http://127.0.0.1:8081/", "/tmp/wrk-api.out")
    try:
        out, _ = api.deploy("2.3.0", {"error_log_per_sec": 20})
    finally:
        wrk = stop_load(api.host, "/tmp/wrk-api.out")
    assert out.rc == 3 and "journal error rate" in out.stderr
    assert "Socket errors" not in wrk, wrk
    assert "Non-2xx" not in wrk, wrk
    assert api.serving() == f"sampleapp {current}"


def test_rollback_during_probation_is_immediate(api):
    current = api.status()["current"]
    api.configure(probation=60)
    try:
        started = api.host.run(f"bloomctl deploy --no-wait api {api.release('2.4.0')}")
        assert started.rc == 0, started.stderr
        wait_until(lambda: api.status()["state"] == "probation", 20, "probation to begin")
        # On trial: the /run pointer names the new release, the blessed one in /etc stays.
        assert api.host.file("/run/systemd/system/api.socket.d/60-bloom-trial.conf").contains("api@2.4.0.service")
        assert api.host.file("/etc/systemd/system/api.socket.d/50-bloom-release.conf").contains(f"api@{current}.service")
        began = time.monotonic()
        out = api.host.run("bloomctl rollback api")
        elapsed = time.monotonic() - began
        assert out.rc == 3, out.stdout + out.stderr
        assert "rollback requested by root" in out.stderr
        assert elapsed < 15, f"rollback took {elapsed:.1f} s of a 60 s probation"
        assert api.serving() == f"sampleapp {current}"
    finally:
        api.configure()


def test_reboot_during_probation_comes_back_on_last_good(api, machine):
    current = api.status()["current"]
    api.configure(probation=120)
    try:
        assert api.host.run(f"bloomctl deploy --no-wait api {api.release('2.5.0')}").rc == 0
        wait_until(lambda: api.status()["state"] == "probation", 20, "probation to begin")
        assert api.serving() == "sampleapp 2.5.0"
        machine.reboot()
        wait_until(lambda: api.host.run("curl -sS --max-time 5 http://127.0.0.1:8081/").stdout.strip()
                   == f"sampleapp {current}", 40, "the last good release after reboot")
        wait_until(lambda: api.status()["state"] == "serving", 40, "the agent to settle")
        assert api.running() == [f"api@{current}.service"]
        record = next(h for h in api.history() if h["version"] == "2.5.0" and h["action"] == "switch")
        assert record["outcome"] == "rolled-back"
        assert "the host rebooted during step probation" in record["reason"]
    finally:
        api.configure()


def test_rollback_failure_is_degraded_runs_hook_and_logs_crit(api):
    current = api.status()["current"]
    exe = f"/var/lib/bloom/releases/api/{current}/bin/sampleapp"
    api.host.check_output(f"chmod -x {exe}")  # the previous release can no longer start
    try:
        out, _ = api.deploy("2.6.0", {"crash_after_sec": 1})
        assert out.rc == 4, out.stdout + out.stderr
        assert "degraded" in out.stderr and f"cannot start {current} again" in out.stderr
        hook = json.loads(api.host.check_output("cat /tmp/hook-rollback-failure.json"))
        assert (hook["event"], hook["outcome"], hook["version"]) == ("rollback_failure", "degraded", "2.6.0")
        crit = api.host.check_output("journalctl -o json --no-pager MESSAGE_ID=4b8a0c3e9d2f4e6b9a71c5d0e2f3a8b1")
        assert any(json.loads(line)["PRIORITY"] == "2" for line in crit.splitlines())
        assert api.status()["state"] == "degraded"
    finally:
        api.host.check_output(f"chmod +x {exe}")
    # The operator's way out: a good release.
    out, _ = api.deploy("2.7.0")
    assert out.rc == 0, out.stderr
    assert api.status()["state"] == "serving"


def test_health_command_runs_checks_now(api):
    out = api.host.run("bloomctl health api --json")
    assert out.rc == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["healthy"] is True and result["version"] == api.status()["current"]
    assert [c["name"] for c in result["checks"]] == ["unit", "http#0", "memory#1", "tasks#2"]
    assert "HTTP 200" in result["checks"][1]["detail"]
    # Measured for real: systemd's accounting, or the unit's cgroup read with psutil where that is off.
    assert re.fullmatch(r"memory \d+ bytes", result["checks"][2]["detail"]), result["checks"][2]
    assert re.fullmatch(r"\d+ tasks", result["checks"][3]["detail"]), result["checks"][3]
    human = api.host.run("bloomctl health api")
    assert human.rc == 0 and "healthy" in human.stdout


@pytest.mark.parametrize("limits, reason", [
    ({"memory": 1000}, r"memory#1: memory \d+ bytes > 1000"),
    ({"tasks": 1}, r"tasks#2: \d+ tasks > 1"),
], ids=["memory", "tasks"])
def test_memory_and_task_limits_refuse_a_release(api, limits, reason):
    current = api.status()["current"]
    api.configure(**limits)
    try:
        version = "3.0.0" if "memory" in limits else "3.0.1"
        out, _ = api.deploy(version)
        assert out.rc == 3, out.stdout + out.stderr
        assert re.search(reason, out.stderr), out.stderr
        assert api.serving() == f"sampleapp {current}"
    finally:
        api.configure()


CUSTOM_CHECKS = """
[[health_check]]
type = "command"
name = "queue-depth"
command = 'test "$BLOOM_APP" = api && echo queue short'

[[health_check]]
type = "python"
name = "plugin"
entry_point = "bloomtest-queue"
"""


def test_custom_checks_executable_and_entry_point_plugin(api):
    """Bloom's register_check, the systemd way: any executable, or a callable in an entry point group."""
    site = "/usr/local/lib/python3.11/dist-packages"
    api.host.check_output(
        f"mkdir -p {site}/bloomtestchecks-1.0.dist-info && "
        f"printf 'def queue_ok(target):\\n    return True, f\"plugin saw {{target.app}} {{target.version}}\"\\n' "
        f"> {site}/bloomtestchecks.py && "
        f"printf 'Metadata-Version: 2.1\\nName: bloomtestchecks\\nVersion: 1.0\\n' > {site}/bloomtestchecks-1.0.dist-info/METADATA && "
        f"printf '[bloom_agent.health_checks]\\nbloomtest-queue = bloomtestchecks:queue_ok\\n' "
        f"> {site}/bloomtestchecks-1.0.dist-info/entry_points.txt")
    api.configure(extra=CUSTOM_CHECKS)
    try:
        result = json.loads(api.host.check_output("bloomctl health api --json"))
        checks = {c["name"]: c for c in result["checks"]}
        current = api.status()["current"]
        assert checks["queue-depth"]["ok"] and checks["queue-depth"]["detail"] == "queue short"
        assert checks["plugin"]["ok"] and checks["plugin"]["detail"] == f"plugin saw api {current}"
        # The plugin also guards a switch: it runs before the switch and during probation.
        out, _ = api.deploy("3.1.0")
        assert out.rc == 0, out.stderr
    finally:
        api.configure()
        api.host.run(f"rm -rf {site}/bloomtestchecks.py {site}/bloomtestchecks-1.0.dist-info")


def test_no_stray_release_after_a_failed_rollback(api):
    """The release that could not be restarted is stopped, not left to systemd's restart loop."""
    assert api.running() == [f"api@{api.status()['current']}.service"]
