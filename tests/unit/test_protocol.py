import json

import pytest

from bloom_agent.control import protocol
from bloom_agent.errors import BloomError, PermissionDenied, ProtocolError, from_wire


def test_request_round_trip():
    line = protocol.encode_request("status", {"app": "web"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    request = protocol.decode_request(line)
    assert request == protocol.Request("status", {"app": "web"})


@pytest.mark.parametrize(
    "line, message",
    [
        (b"not json\n", "not valid JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"command": "status"}\n', "unsupported protocol version None"),
        (b'{"v": 2, "command": "status"}\n', "unsupported protocol version 2"),
        (b'{"v": 1}\n', "has no 'command'"),
        (b'{"v": 1, "command": "status", "args": []}\n', "'args' must be a JSON object"),
    ],
)
def test_bad_requests_are_protocol_errors(line, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_request(line)


def test_error_survives_the_wire_with_its_type():
    err = PermissionDenied("permission denied: bob", hint="join the group")
    message = protocol.decode_response(protocol.error(err))
    rebuilt = from_wire(message["error"])
    assert type(rebuilt) is PermissionDenied
    assert (rebuilt.message, rebuilt.hint, rebuilt.exit_code) == ("permission denied: bob", "join the group", 1)


def test_unknown_error_code_becomes_plain_bloom_error():
    rebuilt = from_wire({"code": "from-the-future", "message": "something new"})
    assert type(rebuilt) is BloomError and rebuilt.message == "something new"


def test_progress_and_ok_lines():
    assert json.loads(protocol.progress({"step": "x"})) == {"v": 1, "progress": {"step": "x"}}
    assert protocol.decode_response(protocol.ok({"a": 1})) == {"v": 1, "ok": True, "result": {"a": 1}}


def test_every_error_the_agent_sends_is_rebuilt_with_its_type_and_exit_code():
    import importlib
    import pkgutil

    import bloom_agent
    from bloom_agent import errors

    for info in pkgutil.walk_packages(bloom_agent.__path__, "bloom_agent."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(errors.BloomError):
        if "code" not in cls.__dict__:
            continue  # client-side only (bloomctl's outcome errors): never on the wire
        rebuilt = errors.from_wire({"code": cls.code, "message": "m", "hint": "h"})
        assert type(rebuilt) is cls, f"{cls.__name__} ({cls.code!r}) is missing from errors._BY_CODE"
        assert rebuilt.exit_code == cls.exit_code and (rebuilt.message, rebuilt.hint) == ("m", "h")


def test_a_request_nested_too_deeply_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="nested too deeply"):
        protocol.decode_request(b"[" * 100_000 + b"]" * 100_000 + b"\n")
