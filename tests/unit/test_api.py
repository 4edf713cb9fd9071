"""The HTTPS API: signing, its clock window and nonces, the strict HTTP parser, the [api] settings, and
the server in the in-process agent over real TLS on loopback: each refusal's status and reason, caps,
slow clients, the rate limit, and bloomctl --url end to end."""

import asyncio
import hashlib
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bloom_agent.config import agent as config
from bloom_agent.control import http11, https, signing
from bloom_agent.errors import ConfigError, Unauthorized
from fake_systemd import FakeJournal
from inprocess import InProcessAgent

SECRET = "0123456789abcdef" * 4
REPO = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.fixture(autouse=True)
def quiet_journal():
    FakeJournal.entries = []


# -- signing -------------------------------------------------------------------------------------

def test_the_string_to_sign_is_the_six_lines_the_docs_show():
    assert signing.string_to_sign("POST", "/v1/status?app=web", "1700000000", "n" * 16, "AB" * 32) == (
        b"BLOOM-HMAC-SHA256\nPOST\n/v1/status?app=web\n1700000000\n" + b"n" * 16 + b"\n" + b"ab" * 32)


def headers_of(signed: dict) -> dict:
    return {k.lower(): v for k, v in signed.items()}


def test_a_signed_request_passes_once_and_its_replay_is_refused():
    now = [1_700_000_000.0]
    verifier = signing.Verifier(60, clock=lambda: now[0])
    signed = headers_of(signing.sign(SECRET.encode(), "POST", "/v1/status", signing.EMPTY_BODY_SHA256, now=now[0]))
    assert verifier.check(SECRET.encode(), "POST", "/v1/status", signed) == signing.EMPTY_BODY_SHA256
    with pytest.raises(Unauthorized, match="replayed request: nonce"):
        verifier.check(SECRET.encode(), "POST", "/v1/status", signed)
    # once the window is over, the nonce is forgotten, and the clock refuses the request instead
    now[0] += 61
    with pytest.raises(Unauthorized, match="61 s behind the host's clock; at most 60 s"):
        verifier.check(SECRET.encode(), "POST", "/v1/status", signed)
    assert verifier._seen == set()


@pytest.mark.parametrize("change, reason", [
    (lambda h: h.pop("authorization"), "missing signature: no Authorization header"),
    (lambda h: h.update(authorization="Bearer abc"), "malformed Authorization header"),
    (lambda h: h.pop("bloom-nonce"), "missing Bloom-Nonce header"),
    (lambda h: h.update({"bloom-nonce": "short"}), "malformed Bloom-Nonce header"),
    (lambda h: h.update({"bloom-timestamp": "-5"}), "malformed Bloom-Timestamp header"),
    (lambda h: h.update({"bloom-content-sha256": "ab" * 32}), "wrong signature"),
    (lambda h: h.update(authorization="BLOOM-HMAC-SHA256 " + "0" * 64), "wrong signature"),
])
def test_a_request_not_signed_right_is_refused_with_its_reason(change, reason):
    verifier = signing.Verifier(60)
    signed = headers_of(signing.sign(SECRET.encode(), "POST", "/v1/status", signing.EMPTY_BODY_SHA256))
    change(signed)
    with pytest.raises(Unauthorized, match=reason):
        verifier.check(SECRET.encode(), "POST", "/v1/status", signed)


def test_what_the_signature_covers():
    verifier = signing.Verifier(60)
    for method, target, secret in (("GET", "/v1/status", SECRET), ("POST", "/v1/status?app=x", SECRET),
                                   ("POST", "/v1/status", SECRET[::-1])):
        signed = headers_of(signing.sign(secret.encode(), "POST", "/v1/status", signing.EMPTY_BODY_SHA256))
        with pytest.raises(Unauthorized, match="wrong signature"):
            verifier.check(SECRET.encode(), method, target, signed)


def test_a_request_from_the_future_and_one_signed_before_the_agent_started():
    now = 1_700_000_000.0
    verifier = signing.Verifier(30, clock=lambda: now)
    ahead = headers_of(signing.sign(SECRET.encode(), "POST", "/v1/x", signing.EMPTY_BODY_SHA256, now=now + 31))
    with pytest.raises(Unauthorized, match="31 s ahead of the host's clock"):
        verifier.check(SECRET.encode(), "POST", "/v1/x", ahead)
    before = headers_of(signing.sign(SECRET.encode(), "POST", "/v1/x", signing.EMPTY_BODY_SHA256, now=now - 2))
    with pytest.raises(Unauthorized, match="signed before the agent started"):
        verifier.check(SECRET.encode(), "POST", "/v1/x", before)


@pytest.mark.parametrize("text, problem", [
    ("short\n", "at least 32 are needed"),
    ("has a space in it, which is not allowed at all\n", "one line of printable ASCII"),
    (SECRET + "\r\n", "one line of printable ASCII"),
])
def test_a_secret_is_one_long_line(text, problem):
    with pytest.raises(ValueError, match=problem):
        signing.parse_secret(text, "f")
    assert signing.parse_secret(SECRET + "\n", "f") == SECRET.encode()


# -- the HTTP parser -----------------------------------------------------------------------------

def test_a_request_head_is_read_strictly():
    head = http11.parse_request_head(b"POST /v1/deploy?app=web HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n"
                                     b"Expect: 100-continue\r\n\r\n")
    assert (head.method, head.target, head.content_length, head.expects_continue) == ("POST", "/v1/deploy?app=web",
                                                                                      12, True)


@pytest.mark.parametrize("raw, status, reason", [
    (b"POST /v1/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "given twice"),
    (b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, "Content-Length, not Transfer-Encoding"),
    (b"POST /v1/x HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400, "folded header"),
    (b"POST /v1/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length must be"),
    (b"POST /v1/x HTTP/1.1\r\nA: \xc3\xa9\r\n\r\n", 400, "ASCII"),
    (b"POST http://x/v1/x HTTP/1.1\r\n\r\n", 400, "must be a path"),
    (b"POST /v1/x HTTP/2\r\n\r\n", 505, "send HTTP/1.1"),
    (b"POST /v1/x HTTP/1.1\nHost: h\n\n", 400, "CRLF"),
])
def test_a_malformed_request_head_is_refused_with_a_status(raw, status, reason):
    with pytest.raises(http11.HttpError) as info:
        http11.parse_request_head(raw)
    assert info.value.status == status and reason in info.value.message


# -- the [api] settings --------------------------------------------------------------------------

def test_api_settings_default_to_loopback_only(tmp_path):
    api = config.load(tmp_path / "absent.toml").api
    assert (api.allowed_ips, api.clock_window_sec, api.secret_file) == (("127.0.0.1", "::1"), 60,
                                                                         Path("/etc/bloom/api.secret"))


@pytest.mark.parametrize("text, expected", [
    ('allowed_ips = ["10.0.0.1/8"]', "key 'api.allowed_ips': '10.0.0.1/8' has host bits set; the range is 10.0.0.0/8"),
    ('allowed_ips = ["example.org"]', "key 'api.allowed_ips': 'example.org' is not an IP address or CIDR range"),
    ('allowed_ips = "10.0.0.0/8"', "key 'api.allowed_ips': must be a list"),
    ("clock_window_sec = 0", "key 'api.clock_window_sec': must be from 1 to 900, got 0"),
    ('secret_file = "api.secret"', "key 'api.secret_file': must be an absolute path"),
    ('secret_credential = "a/b"', "key 'api.secret_credential': not a credential name"),
    ("port = 9443", "unknown key 'api.port'"),
])
def test_a_bad_api_setting_is_refused_by_name(tmp_path, text, expected):
    path = tmp_path / "agent.toml"
    path.write_text(f"[api]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def make_credentials(where: Path, secret: str = SECRET) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, its key and the secret, as root-only files."""
    where.mkdir(parents=True, exist_ok=True)
    files = {"certificate": where / "api.crt", "key": where / "api.key", "secret_file": where / "api.secret"}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(files["key"]), "-out", str(files["certificate"]), "-days", "2", "-subj", "/CN=bloom",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    files["secret_file"].write_text(secret + "\n")
    for path in (files["key"], files["secret_file"]):
        path.chmod(0o600)
    return files


def api_config(tmp_path: Path, **extra) -> config.ApiConfig:
    files = make_credentials(tmp_path / "cred")
    lines = [f'{k} = "{v}"' for k, v in files.items()] + [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "etc/bloom/agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[api]\n" + "\n".join(lines) + "\n")
    return config.load(path).api


def test_what_the_api_settings_name_is_read_and_checked(tmp_path):
    settings = api_config(tmp_path)
    loaded = https.load(settings)
    assert loaded.secret == SECRET.encode() and loaded.allows("127.0.0.1") and not loaded.allows("192.0.2.1")
    settings.secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"api.secret_file .* may be read by others \(mode 0644\)") as info:
        https.load(settings)
    assert info.value.hint == f"chmod 600 {settings.secret_file}"
    settings.secret_file.chmod(0o600)
    settings.certificate.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot be used"):
        https.load(settings)


def test_the_secret_can_be_a_systemd_credential(tmp_path):
    import dataclasses

    settings = dataclasses.replace(api_config(tmp_path), secret_credential="bloom-api", secret_file=Path("/nonexistent"))
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set") as info:
        https.load(settings)
    assert "LoadCredential=bloom-api:" in info.value.hint
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds/bloom-api").write_text("f" * 40 + "\n")
    assert https.load(settings, str(tmp_path / "creds")).secret == b"f" * 40


# -- the server, in the in-process agent ---------------------------------------------------------

class Api:
    """The in-process agent with its HTTPS API on a loopback port, and a raw client for it."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.settings = api_config(tmp_path, **settings)
        self.host = InProcessAgent(tmp_path)
        self.host.declare("web", 8080)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self.tls = ssl.create_default_context(cafile=str(self.settings.certificate))

    async def start(self) -> "Api":
        await self.host.start(api_sock=self.sock)
        return self

    def connect(self) -> ssl.SSLSocket:
        return self.tls.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=20),
                                    server_hostname="127.0.0.1")

    def exchange(self, target: str, body: bytes = b"", headers: dict | None = None, method: str = "POST",
                 secret: str = SECRET, sign: bool = True) -> tuple[int, dict, list[dict]]:
        """One request; the status, the headers and the answer's JSON lines."""
        digest = hashlib.sha256(body).hexdigest()
        signed = signing.sign(secret.encode(), method, target, digest) if sign else {}
        all_headers = {"Host": "127.0.0.1", "Content-Length": str(len(body)), **signed, **(headers or {})}
        raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
        with self.connect() as sock, sock.makefile("rb") as stream:
            sock.sendall(raw.encode() + body)
            head = http11.read_response_head(stream)
            lines = [json.loads(line) for line in http11.body_lines(stream, head)]
        return head.status, head.headers, lines

    async def call(self, *args, **kwargs):
        return await asyncio.to_thread(self.exchange, *args, **kwargs)

    def bloomctl(self, *args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        environ = {**os.environ, "PYTHONPATH": str(REPO / "agent"), "BLOOM_URL": self.url,
                   "BLOOM_API_SECRET_FILE": str(self.settings.secret_file),
                   "BLOOM_API_CACERT": str(self.settings.certificate), **(env or {})}
        return subprocess.run([sys.executable, "-m", "bloom_agent.cli", *args], env=environ, capture_output=True,
                              text=True, timeout=60, **kwargs)

    async def bloomctl_async(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(self.bloomctl, *args, **kwargs)


def test_bloomctl_url_deploys_streams_progress_and_answers_like_the_control_socket(tmp_path):
    api = Api(tmp_path)

    async def scenario():
        await api.start()
        tarball = api.host.tarball("web", "1.0.0")
        deployed = await api.bloomctl_async("deploy", "web", str(tarball))
        over_api = await api.bloomctl_async("status", "web", "--json")
        local = await api.host.call("status", {"app": "web"})
        with open(tarball, "rb") as stdin:
            piped = await api.bloomctl_async("install", "web", "-", "--version", "1.0.1", stdin=stdin)
        unknown = await api.bloomctl_async("rollback", "nosuch")
        history = await api.host.call("history", {"app": "web"})
        await api.host.stop()
        return deployed, over_api, local, piped, unknown, history

    deployed, over_api, local, piped, unknown, history = run(scenario())
    assert deployed.returncode == 0, deployed.stderr
    assert "web: - -> 1.0.0: done" in deployed.stdout
    assert " starting: 1.0.0" in deployed.stderr  # progress lines, as they came
    assert json.loads(over_api.stdout) == local
    assert piped.returncode == 0 and "installed web 1.0.1" in piped.stdout, piped.stderr
    assert unknown.returncode == 1 and "bloomctl: unknown app 'nosuch'" in unknown.stderr
    assert {h["caller"] for h in history} == {"api from 127.0.0.1"}
    assert (tmp_path / "var/lib/bloom/releases/web/1.0.1/bin/app").is_file()


def test_arguments_are_text_read_by_each_commands_declared_type(tmp_path):
    api = Api(tmp_path)

    async def scenario():
        await api.start()
        good = await api.call("/v1/history?app=web&limit=2")
        bad = await api.call("/v1/history?app=web&limit=many")
        twice = await api.call("/v1/history?app=web&app=api")
        body_for_nothing = await api.call("/v1/status", body=b"{}")
        no_command = await api.call("/v2/status")
        await api.host.stop()
        return good, bad, twice, body_for_nothing, no_command

    good, bad, twice, body_for_nothing, no_command = run(scenario())
    assert good[0] == 200 and good[2] == [{"v": 1, "ok": True, "result": []}]
    assert bad[0] == 400 and bad[2][0]["error"]["message"] == "history: argument 'limit' must be an integer, got 'many'"
    assert twice[0] == 400 and "argument 'app' is given twice" in twice[2][0]["error"]["message"]
    assert body_for_nothing[0] == 400 and body_for_nothing[2][0]["error"]["message"] == "status takes no upload"
    assert no_command[0] == 404 and "commands are POST /v1/COMMAND" in no_command[2][0]["error"]["message"]


def test_each_refusal_has_its_status_and_reason_and_is_logged_with_the_address(tmp_path, caplog):
    api = Api(tmp_path, max_request_bytes=1000)
    caplog.set_level(logging.INFO, logger="bloom_agent")

    async def scenario():
        await api.start()
        results = {
            "unsigned": await api.call("/v1/status", sign=False),
            "wrong": await api.call("/v1/status", secret=SECRET[::-1]),
            "get": await api.call("/v1/status", method="GET"),
            "large": await api.call("/v1/install?app=web&version=1.0.0", body=b"x" * 1001),
        }
        stale = signing.sign(SECRET.encode(), "POST", "/v1/status", signing.EMPTY_BODY_SHA256, now=time.time() - 3600)
        results["stale"] = await api.call("/v1/status", headers=stale, sign=False)
        replayed = signing.sign(SECRET.encode(), "POST", "/v1/status", signing.EMPTY_BODY_SHA256)
        results["first"] = await api.call("/v1/status", headers=replayed, sign=False)
        results["replay"] = await api.call("/v1/status", headers=replayed, sign=False)
        await api.host.stop()
        return results

    results = run(scenario())
    expect = {
        "unsigned": (401, "missing signature: no Authorization header"),
        "wrong": (401, "wrong signature"),
        "get": (405, "GET is not used here: every command is a POST"),
        "large": (413, "request body of 1001 bytes; at most 1000 ([api] max_request_bytes)"),
        "stale": (401, "expired or future request: its timestamp is 36"),
        "replay": (401, "replayed request: nonce"),
    }
    for name, (status, reason) in expect.items():
        got_status, headers, lines = results[name]
        assert (got_status, lines[-1]["ok"]) == (status, False), (name, results[name])
        assert lines[-1]["error"]["message"].startswith(reason), (name, lines)
    assert results["first"][0] == 200
    assert results["unsigned"][1]["www-authenticate"] == "BLOOM-HMAC-SHA256"
    assert results["get"][1]["allow"] == "POST"
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("api: refused 127.0.0.1")]
    assert len(logged) == 6 and any("401 wrong signature" in line for line in logged), logged
    assert not (tmp_path / "var/lib/bloom/releases/web").exists(), "nothing was installed"


def test_an_address_outside_allowed_ips_is_refused_before_anything_else(tmp_path):
    api = Api(tmp_path, allowed_ips=["192.0.2.0/24", "2001:db8::/32"])

    async def scenario():
        await api.start()
        refused = await api.call("/v1/status")
        await api.host.stop()
        return refused

    status, _, lines = run(scenario())
    assert (status, lines[0]["error"]["code"]) == (403, "address_refused")
    assert lines[0]["error"]["message"] == "address 127.0.0.1 may not use this API ([api] allowed_ips)"


def test_refusals_beyond_the_limit_get_429_until_the_minute_is_over(tmp_path):
    api = Api(tmp_path, failures_per_minute=3)

    async def scenario():
        await api.start()
        wrong = [await api.call("/v1/status", secret=SECRET[::-1]) for _ in range(3)]
        limited = await api.call("/v1/status")  # signed right, but the address waits
        # a minute later, as the limiter's clock sees it
        limiter = api.host.agent.api.failures
        times = limiter._by_address["127.0.0.1"]
        for i in range(len(times)):
            times[i] -= 61
        again = await api.call("/v1/status")
        await api.host.stop()
        return wrong, limited, again

    wrong, limited, again = run(scenario())
    assert [w[0] for w in wrong] == [401, 401, 401]
    assert limited[0] == 429 and limited[2][0]["error"]["code"] == "rate_limited"
    assert "too many refused requests from 127.0.0.1" in limited[2][0]["error"]["message"]
    assert 50 <= int(limited[1]["retry-after"]) <= 61
    assert again[0] == 200


def test_a_slow_client_is_dropped_and_the_connection_cap_holds(tmp_path):
    api = Api(tmp_path, header_timeout_sec=1.0, max_connections=2)

    async def scenario():
        await api.start()
        silent = socket.create_connection(("127.0.0.1", api.port))  # no TLS handshake at all
        slow = await asyncio.to_thread(api.connect)
        slow.sendall(b"POST /v1/status HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        await asyncio.sleep(0.2)
        crowded = await asyncio.to_thread(_closed_at_once, api.port)
        started = time.monotonic()
        answer = await asyncio.to_thread(lambda: slow.recv(4096))
        held = time.monotonic() - started
        silent.settimeout(5)
        silent_end = await asyncio.to_thread(silent.recv, 1)
        served = await api.call("/v1/status")
        slow.close()
        silent.close()
        await api.host.stop()
        return crowded, answer, held, silent_end, served

    crowded, answer, held, silent_end, served = run(scenario())
    assert crowded, "a connection beyond max_connections is closed before the handshake"
    assert answer.startswith(b"HTTP/1.1 408 ") and b"no complete request headers within 1 s" in answer
    assert held < 3
    assert silent_end == b""
    assert served[0] == 200


def _closed_at_once(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(1) == b""


def test_a_body_that_is_not_the_signed_one_installs_nothing(tmp_path):
    api = Api(tmp_path)

    async def scenario():
        await api.start()
        tarball = api.host.tarball("web", "1.0.0").read_bytes()
        target = "/v1/install?app=web&version=1.0.0"
        other = signing.sign(SECRET.encode(), "POST", target, hashlib.sha256(b"another body").hexdigest())
        swapped = await api.call(target, body=tarball, headers=other, sign=False)
        releases = await api.host.call("releases", {"app": "web"})
        await api.host.stop()
        return swapped, releases

    (status, _, lines), releases = run(scenario())
    assert status == 401 and lines[-1]["error"]["message"] == "the body does not match its signed Bloom-Content-SHA256"
    assert releases == []
    assert [p.name for p in (tmp_path / "var/lib/bloom/releases/web").iterdir()] == []


def test_a_reload_applies_a_new_secret_and_refuses_a_bad_one(tmp_path):
    api = Api(tmp_path)

    async def scenario():
        await api.start()
        api.settings.secret_file.write_text("n" * 40 + "\n")
        reloaded = await api.host.call("reload")
        old = await api.call("/v1/status")
        new = await api.call("/v1/status", secret="n" * 40)
        api.settings.secret_file.write_text("short\n")
        refused = await api.host.call("reload")
        still = await api.call("/v1/status", secret="n" * 40)
        await api.host.stop()
        return reloaded, old, new, refused, still

    reloaded, old, new, refused, still = run(scenario())
    assert reloaded["config_reloaded"] and old[0] == 401 and new[0] == 200
    assert not refused["config_reloaded"] and still[0] == 200


def test_bloomctl_url_says_what_is_wrong_on_its_side(tmp_path):
    api = Api(tmp_path)
    no_secret = api.bloomctl("status", env={"BLOOM_API_SECRET_FILE": ""})
    assert no_secret.returncode == 2 and "--url needs the API's shared secret: --secret-file FILE" in no_secret.stderr
    plain = api.bloomctl("--url", "http://127.0.0.1:1", "status")
    assert plain.returncode == 2 and "the API is spoken over https://HOST[:PORT] only" in plain.stderr
    both = api.bloomctl("-H", "web1", "status")
    assert both.returncode == 2 and "give -H (ssh) or --url (HTTPS API), not both" in both.stderr
    nobody = api.bloomctl("--url", "https://127.0.0.1:1", "status")
    assert nobody.returncode == 1 and "cannot connect to https://127.0.0.1:1: Connection refused" in nobody.stderr

    wrong_secret = tmp_path / "wrong.secret"
    wrong_secret.write_text("w" * 40 + "\n")

    async def scenario():
        await api.start()
        untrusted = await api.bloomctl_async("status", env={"BLOOM_API_CACERT": ""})
        wrong = await api.bloomctl_async("--secret-file", str(wrong_secret), "status", "web", "--json")
        await api.host.stop()
        return untrusted, wrong

    untrusted, wrong = run(scenario())
    assert untrusted.returncode == 1 and "cannot verify" in untrusted.stderr and "--cacert" in untrusted.stderr
    assert (wrong.returncode, wrong.stdout) == (1, "") and wrong.stderr.startswith("bloomctl: wrong signature\ncheck the secret")


def documented_recipe() -> str:
    """The curl and openssl block of docs/api.md, as it stands there."""
    text = (REPO / "docs/api.md").read_text()
    block = text.split("<!-- recipe -->\n", 1)[1].split("<!-- /recipe -->", 1)[0]
    return block.removeprefix("```sh\n").rsplit("```", 1)[0]


def test_the_documented_curl_recipe_deploys_and_asks_for_status(tmp_path):
    api = Api(tmp_path)
    api.host.declare("blog", 8081)
    work = tmp_path / "work"
    work.mkdir()
    api.host.tarball("blog", "1.5.0").rename(work / "blog-1.5.0.tar.gz")
    settings = f"API={api.url}\nSECRET_FILE={api.settings.secret_file}\nCACERT={api.settings.certificate}\n"

    async def scenario():
        await api.start()
        out = await asyncio.to_thread(subprocess.run, ["bash", "-ec", settings + documented_recipe()], cwd=work,
                                      capture_output=True, text=True, timeout=60)
        history = await api.host.call("history", {"app": "blog"})
        await api.host.stop()
        return out, history

    out, history = run(scenario())
    assert out.returncode == 0, out.stderr
    deployed, status = [json.loads(line) for line in out.stdout.splitlines()]
    assert deployed["ok"] and (deployed["result"]["outcome"], deployed["result"]["version"]) == ("done", "1.5.0")
    assert status["result"]["current"] == "1.5.0"
    assert {h["caller"] for h in history} == {"api from 127.0.0.1"}


def socket_activated(tmp_path: Path, config_text: str) -> tuple[subprocess.Popen, int, Path]:
    """The agent as a process, handed a control socket and an API socket the way systemd hands them
    (fds 3 and 4, LISTEN_FDNAMES), running under --root tmp_path."""
    from agentproc import agent_env, daemon_argv

    (tmp_path / "control.sock").unlink(missing_ok=True)
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(tmp_path / "control.sock"))
    control.listen(8)
    api = socket.socket()
    api.bind(("127.0.0.1", 0))
    api.listen(8)
    config_path = tmp_path / "agent.toml"
    config_path.write_text(config_text)

    def as_systemd_does():
        copies = [os.dup(control.fileno()), os.dup(api.fileno())]  # out of the way of 3 and 4 first
        os.dup2(copies[0], 3)
        os.dup2(copies[1], 4)

    env = agent_env(LISTEN_FDS="2", LISTEN_FDNAMES="bloom-agent.socket:bloom-api")
    argv = ["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *daemon_argv(tmp_path, config_path)]
    proc = subprocess.Popen(argv, env=env, preexec_fn=as_systemd_does, close_fds=False,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    control.close()
    port = api.getsockname()[1]
    api.close()
    return proc, port, tmp_path / "control.sock"


def test_the_agent_takes_the_api_socket_by_its_name_and_refuses_to_start_with_a_bad_api_setting(tmp_path):
    files = make_credentials(tmp_path / "cred")
    files["secret_file"].chmod(0o640)
    table = "[api]\n" + "".join(f'{k} = "{v}"\n' for k, v in files.items())
    proc, _, _ = socket_activated(tmp_path, '[agent]\nstate_dir = "/state"\n' + table)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 78, out
    assert f"api.secret_file {files['secret_file']} may be read by others (mode 0640)" in out
    assert "systemctl disable --now bloom-agent-api.socket" in out

    files["secret_file"].chmod(0o600)
    proc, port, control = socket_activated(tmp_path, '[agent]\nstate_dir = "/state"\n' + table)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO / "agent")}
        ask = [sys.executable, "-m", "bloom_agent.cli", "--url", f"https://127.0.0.1:{port}", "--secret-file",
               str(files["secret_file"]), "--cacert", str(files["certificate"]), "status", "--json"]
        for _ in range(100):
            remote = subprocess.run(ask, env=env, capture_output=True, text=True, timeout=30)
            if remote.stdout:
                break
            time.sleep(0.1)
        local = subprocess.run([sys.executable, "-m", "bloom_agent.cli", "--socket", str(control), "status", "--json"],
                               env=env, capture_output=True, text=True, timeout=30)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert json.loads(remote.stdout)["caller"] == {"user": "api", "uid": -1, "remote": "127.0.0.1"}, remote.stderr + out
    assert json.loads(local.stdout)["agent"]["pid"] == json.loads(remote.stdout)["agent"]["pid"]
    assert f"HTTPS API listening on ('127.0.0.1', {port})" in out


def test_the_shipped_agent_toml_shows_every_api_default(tmp_path):
    import re

    shipped = (REPO / "conf/agent.toml").read_text()
    uncommented = re.sub(r"(?m)^#(\[api\]|[a-z_]+ = )", r"\1", shipped)
    path = tmp_path / "agent.toml"
    path.write_text(uncommented)
    assert "[api]" in uncommented and config.load(path).api == config.load(tmp_path / "absent.toml").api
    assert {f.name for f in config.API_FIELDS} <= set(re.findall(r"(?m)^([a-z_]+) = ", uncommented))


def test_addresses_of_a_dual_stack_socket_and_ranges_of_both_families(tmp_path):
    import dataclasses

    assert https._address(("::ffff:192.0.2.7", 40000, 0, 0)) == "192.0.2.7"
    assert https._address(("fe80::1%lo", 40000, 0, 1)) == "fe80::1"
    settings = dataclasses.replace(api_config(tmp_path), allowed_ips=("192.0.2.0/24", "2001:db8::/32", "10.1.2.3"))
    loaded = https.load(settings)
    assert [loaded.allows(a) for a in ("192.0.2.200", "192.0.3.1", "2001:db8::5", "2001:db9::5", "10.1.2.3",
                                       "10.1.2.4")] == [True, False, True, False, True, False]


def test_any_bytes_are_a_request_head_or_a_refusal_with_a_status():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    lines = st.lists(st.sampled_from([b"POST /v1/status HTTP/1.1", b"Content-Length: 5", b"Content-Length: x",
                                      b"Transfer-Encoding: chunked", b" folded", b"Host: h", b"", b"\xff"])
                     | st.binary(max_size=40), max_size=6)

    @settings(max_examples=400, deadline=None)
    @given(st.one_of(st.binary(max_size=300), lines.map(lambda ls: b"\r\n".join(ls) + b"\r\n\r\n")))
    def parse(raw):
        try:
            head = http11.parse_request_head(raw)
        except http11.HttpError as err:
            assert err.status in http11.REASONS and err.message
            return
        assert head.target.startswith("/") and head.content_length >= 0

    parse()
