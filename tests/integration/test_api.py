"""The HTTPS API on real systemd: bloom-agent-api.socket shipped off, turned on as docs/api.md says
(a self-signed certificate and a secret made with openssl in the machine), then bloomctl --url and the
documented curl recipe over loopback inside the machine; a wrong signature, a replay and a refused
address change nothing, and the journal names the address."""

import json
import shlex
from pathlib import Path

import pytest

from test_agent_package import wait_until
from test_switch import make_release, ready_timeout

pytestmark = pytest.mark.usefixtures("installed")

REPO = Path(__file__).resolve().parents[2]
URL = "https://127.0.0.1:9443"
CLIENT = f"bloomctl --url {URL} --secret-file /etc/bloom/api.secret --cacert /etc/bloom/api.crt"
APP_FILE = """\
listen = ["127.0.0.1:8086"]
exec = "bin/sampleapp"
probation_sec = 1
ready_timeout_sec = {ready}
"""
# docs/api.md, "Turning it on", steps 1 and 2, for this machine's loopback name
CREDENTIALS = ("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 "
               "-keyout /etc/bloom/api.key -out /etc/bloom/api.crt -subj /CN=127.0.0.1 "
               "-addext subjectAltName=IP:127.0.0.1 2>/dev/null && chmod 600 /etc/bloom/api.key && "
               "(umask 077; openssl rand -hex 32 > /etc/bloom/api.secret)")


def documented_recipe() -> str:
    text = (REPO / "docs/api.md").read_text()
    block = text.split("<!-- recipe -->\n", 1)[1].split("<!-- /recipe -->", 1)[0]
    return block.removeprefix("```sh\n").rsplit("```", 1)[0]


class Api:
    def __init__(self, machine, workdir: Path) -> None:
        self.machine, self.host, self.workdir = machine, machine.host, workdir

    def put_release(self, version: str, where: str = "/root/api-test") -> str:
        built = make_release(version, self.workdir)
        named = built.with_name(f"blog-{version}.tar.gz")
        built.rename(named)
        self.host.check_output(f"mkdir -p {where}")
        self.machine.put(named, f"{where}/")
        return f"{where}/{named.name}"

    def run(self, command: str):
        return self.host.run(command)

    def state(self) -> tuple:
        """What a refused request must leave as it was."""
        return (self.host.check_output("bloomctl releases blog --json"),
                self.host.check_output("bloomctl history blog --json"),
                self.host.check_output("ls -a /var/lib/bloom/releases/blog"))


@pytest.fixture(scope="module")
def api(installed, tmp_path_factory):
    machine = installed
    host = machine.host
    assert host.run("systemctl is-enabled bloom-agent-api.socket").stdout.strip() == "disabled", \
        "the package ships the API's socket off"
    assert host.run(f"curl -sS --max-time 5 -k {URL}/").rc == 7, "and nothing listens on its port"
    host.check_output(f"mkdir -p /etc/bloom/apps && cat > /etc/bloom/apps/blog.toml <<'EOF'\n"
                      f"{APP_FILE.format(ready=ready_timeout(machine, 5))}EOF\n" + CREDENTIALS)
    # step 4: the socket, started while the agent is stopped, and the agent started after it
    checked = host.check_output("bloom-agent --check-config 2>&1 || true")
    assert "[api]: OK (certificate /etc/bloom/api.crt; allowed: 127.0.0.1, ::1)" in checked
    host.check_output("systemctl enable bloom-agent-api.socket && "
                      "systemctl stop bloom-agent && systemctl start bloom-agent-api.socket bloom-agent")
    wait_until(lambda: "bloom-agent" in host.run(f"{CLIENT} status").stdout, 30, "the API to answer")
    yield Api(machine, tmp_path_factory.mktemp("api"))
    host.run("systemctl disable --now bloom-agent-api.socket; systemctl restart bloom-agent")


def test_the_socket_unit_passes_systemd_analyze_verify(api):
    out = api.run("systemd-analyze verify --man=no bloom-agent-api.socket")
    assert out.rc == 0 and "bloom-agent" not in out.stderr, out.stderr
    fds = api.host.check_output("systemctl show -p Triggers bloom-agent-api.socket")
    assert fds == "Triggers=bloom-agent.service"


def test_bloomctl_url_deploys_a_tarball_and_answers_like_the_local_socket(api):
    tarball = api.put_release("1.0.0")
    out = api.run(f"{CLIENT} deploy blog {tarball}")
    assert out.rc == 0, out.stderr
    assert "blog: - -> 1.0.0: done" in out.stdout
    assert "starting: 1.0.0" in out.stderr  # the progress lines, streamed
    remote = json.loads(api.host.check_output(f"{CLIENT} status blog --json"))
    local = json.loads(api.host.check_output("bloomctl status blog --json"))
    assert remote == local and (remote["current"], remote["state"]) == ("1.0.0", "serving")
    assert api.host.check_output("curl -sS --max-time 5 http://127.0.0.1:8086/") == "sampleapp 1.0.0"
    unknown = api.run(f"{CLIENT} rollback nosuch")
    assert unknown.rc == 1 and "bloomctl: unknown app 'nosuch'" in unknown.stderr
    history = json.loads(api.host.check_output("bloomctl history blog --json"))
    assert {h["caller"] for h in history} == {"api from 127.0.0.1"}, history
    journal = api.host.check_output("journalctl -o json --no-pager BLOOM_APP=blog "
                                    "MESSAGE_ID=9f2d6b1a4c8e4b7a3d5f0e9c1b2a6d85")
    assert {json.loads(line)["BLOOM_CALLER"] for line in journal.splitlines()} == {"api from 127.0.0.1"}


def test_the_documented_curl_recipe(api):
    api.put_release("1.5.0", where="/root/recipe")
    settings = f"API={URL}\nSECRET_FILE=/etc/bloom/api.secret\nCACERT=/etc/bloom/api.crt\n"
    out = api.run("cd /root/recipe && bash -ec " + shlex.quote(settings + documented_recipe()))
    assert out.rc == 0, out.stdout + out.stderr
    deployed, status = [json.loads(line) for line in out.stdout.splitlines()]
    assert (deployed["result"]["outcome"], deployed["result"]["version"]) == ("done", "1.5.0"), deployed
    assert (status["result"]["current"], status["result"]["state"]) == ("1.5.0", "serving")


def signed_curl(secret_file: str, target: str, times: int = 1, source: str = "127.0.0.1") -> str:
    """One signed request (the recipe's steps) sent ``times`` times as it is: each answer's status and body."""
    return (f"ts=$(date +%s); nonce=$(openssl rand -hex 16); "
            f"digest=$(openssl dgst -sha256 -r /dev/null | cut -d' ' -f1); "
            f"sig=$(printf 'BLOOM-HMAC-SHA256\\n%s\\n%s\\n%s\\n%s\\n%s' POST '{target}' \"$ts\" \"$nonce\" \"$digest\" | "
            f"openssl dgst -sha256 -hmac \"$(cat {secret_file})\" -r | cut -d' ' -f1); "
            f"for i in $(seq {times}); do curl -sS --interface {source} --cacert /etc/bloom/api.crt "
            f"--data-binary @/dev/null -w 'HTTP %{{http_code}}\\n' -H \"Bloom-Timestamp: $ts\" -H \"Bloom-Nonce: $nonce\" "
            f"-H \"Bloom-Content-SHA256: $digest\" -H \"Authorization: BLOOM-HMAC-SHA256 $sig\" '{URL}{target}'; done")


def answers(output: str) -> list[tuple[dict, str]]:
    """Each answer's last JSON line and its status (curl's ``-w`` line after the body)."""
    found, last = [], None
    for line in output.splitlines():
        if line.startswith("HTTP "):
            found.append((last, line.split()[1]))
        elif line:
            last = json.loads(line)
    return found


def test_a_wrong_signature_a_replay_and_a_refused_address_change_nothing(api):
    api.put_release("1.6.0")
    api.host.check_output(f"{CLIENT} install blog /root/api-test/blog-1.6.0.tar.gz")
    before = api.state()
    api.host.check_output("printf '%s\\n' " + "f" * 64 + " > /root/wrong.secret")
    wrong = answers(api.host.check_output(signed_curl("/root/wrong.secret", "/v1/remove?app=blog&version=1.6.0")))
    assert [(a["error"]["message"], status) for a, status in wrong] == [("wrong signature", "401")]
    # from another loopback address: not in the default allowed_ips (127.0.0.1, ::1)
    elsewhere = answers(api.host.check_output(
        signed_curl("/etc/bloom/api.secret", "/v1/remove?app=blog&version=1.6.0", source="127.0.0.2")))
    assert [(a["error"]["message"], status) for a, status in elsewhere] == [
        ("address 127.0.0.2 may not use this API ([api] allowed_ips)", "403")]
    assert api.state() == before
    # the same signed request twice: served once, then refused
    twice = answers(api.host.check_output(signed_curl("/etc/bloom/api.secret", "/v1/remove?app=blog&version=1.6.0",
                                                      times=2)))
    assert (twice[0][0]["ok"], twice[0][1]) == (True, "200"), twice
    assert twice[1][1] == "401" and twice[1][0]["error"]["message"].startswith("replayed request: nonce "), twice
    releases = json.loads(api.host.check_output("bloomctl releases blog --json"))
    assert "1.6.0" not in {r["version"] for r in releases}
    history = json.loads(api.host.check_output("bloomctl history blog --json"))
    assert [h["action"] for h in history[:2]] == ["remove", "install"], "one removal, by the first request only"
    journal = api.host.check_output("journalctl -u bloom-agent --no-pager -o cat -g 'api: refused'")
    assert "api: refused 127.0.0.1 /v1/remove?app=blog&version=1.6.0: 401 wrong signature" in journal
    assert "api: refused 127.0.0.2 /v1/remove?app=blog&version=1.6.0: 403 address 127.0.0.2 may not use" in journal
    assert "api: refused 127.0.0.1 /v1/remove?app=blog&version=1.6.0: 401 replayed request" in journal


def test_the_api_stays_on_across_a_package_upgrade(api, deb):
    """The upgrade restarts the agent but neither the API's socket nor its enablement: the new agent gets
    the same socket and answers at once."""
    since = api.host.check_output("systemctl show -p ActiveEnterTimestampMonotonic --value bloom-agent-api.socket")
    out = api.run(f"env DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall /root/{deb.name}")
    assert out.rc == 0, out.stdout + out.stderr
    assert api.host.check_output("systemctl is-enabled bloom-agent-api.socket") == "enabled"
    assert api.host.check_output(
        "systemctl show -p ActiveEnterTimestampMonotonic --value bloom-agent-api.socket") == since
    status = json.loads(wait_until(lambda: api.run(f"{CLIENT} status blog --json").stdout, 30, "the API after it"))
    assert status["current"] == "1.5.0"
