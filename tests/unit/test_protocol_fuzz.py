"""The request parser and the control server under arbitrary input: a clear error or a request, never
a crash, and the agent goes on serving others."""

import asyncio
import json
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from bloom_agent.control import protocol
from bloom_agent.errors import ProtocolError
from inprocess import InProcessAgent

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_are_a_request_or_a_protocol_error(line):
    try:
        request = protocol.decode_request(line + b"\n")
    except ProtocolError:
        return
    assert isinstance(request.command, str) and isinstance(request.args, dict)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "command", "args", "upload"]) | st.text(max_size=8), JSON, max_size=5))
def test_any_json_object_is_a_request_or_a_protocol_error(message):
    try:
        request = protocol.decode_request(json.dumps(message).encode() + b"\n")
    except ProtocolError:
        return
    assert request.command and isinstance(request.args, dict) and isinstance(request.upload, bool)


HOSTILE = [
    b"", b"{", b"null", b"[]", b'"x"', b"\xff\xfe\x00", b"[" * 50_000 + b"]" * 50_000,
    b'{"v": 1}', b'{"v": 2, "command": "status"}', b'{"v": 1, "command": ""}', b'{"v": 1, "command": 7}',
    b'{"v": 1, "command": "explode"}', b'{"v": 1, "command": "status", "args": []}',
    b'{"v": 1, "command": "status", "args": {"app": 7}}', b'{"v": 1, "command": "switch", "args": {"app": "web"}}',
    b'{"v": 1, "command": "switch", "args": {"app": "web", "version": "1.0.0", "wait": "yes"}}',
    b'{"v": 1, "command": "history", "args": {"app": "web", "limit": true}}',
    b'{"v": 1, "command": "deploy", "args": {"app": "web"}}',
    b'{"v": 1, "command": "status", "upload": true}', b'{"v": 1, "command": "status", "upload": "yes"}',
    b'{"v": 1, "command": "show", "args": {"app": "web", "deployment": -1}}',
    b'{"v": 1, "command": "remove", "args": {"app": "../../etc", "version": "1.0.0"}}',
    b'{"v": 1, "command": "switch", "args": {"app": "web", "version": "../../x"}}',
]


def test_the_agent_answers_garbage_and_keeps_serving(tmp_path):
    """Hostile requests and random bytes over the real socket: each gets an answer that is not an
    internal error, and a good request afterwards is served."""
    import random

    rng = random.Random(20261201)  # the same bytes every run
    payloads = HOSTILE + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(40)]
    host = InProcessAgent(tmp_path)
    host.declare("web", 8080)

    def exchange(payload: bytes) -> dict | None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(15)
            sock.connect(str(host.paths.control_socket))
            sock.sendall(payload.replace(b"\n", b" ") + b"\n")
            line = sock.makefile("rb").readline()
        return json.loads(line) if line else None

    async def scenario():
        await host.start()
        answers = [await asyncio.to_thread(exchange, payload) for payload in payloads]
        status = await host.call("status")
        await host.stop()
        return answers, status

    answers, status = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert all(a is not None and ("error" in a or "ok" in a) for a in answers), answers
    internal = [(p[:80], a) for p, a in zip(payloads, answers) if "internal error" in str(a.get("error", ""))]
    assert internal == []
    assert status["agent"]["state"] == "idle"
