import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from bloom_agent.config.checks import TRIP_SLACK_SEC, parse_checks
from bloom_agent.errors import ConfigError
from bloom_agent.watch import checks as healthchecks
from bloom_agent.watch import monitors
from bloom_agent.watch.checks import Target, run_check
from fake_systemd import FakeSystemd


def entry(message, priority=6, **extra):
    """A line the release itself logged (journald's trusted _SYSTEMD_UNIT says so)."""
    return {"MESSAGE": message, "PRIORITY": priority, "_SYSTEMD_UNIT": "web@2.service", **extra}


def journald(message, **extra):
    """A line journald itself wrote."""
    return {"MESSAGE": message, "PRIORITY": 6, "_TRANSPORT": "driver", "_PID": 99, **extra}


def test_journal_counts_errors_in_a_sliding_minute():
    m = monitors.JournalMonitor("web@2.service", 3, ())
    assert m.feed(entry("warn", 4), 0) is None
    for t in range(3):
        assert m.feed(entry(f"boom {t}", 3), t) is None
    trip = m.feed(entry("boom 3", 2), 10)
    assert trip == "journal error rate 4/min > 3/min for web@2.service; last error: boom 3"
    # A minute later the old errors have left the window.
    assert monitors.JournalMonitor("x", 3, ()).feed(entry("e", 3), 0) is None
    m2 = monitors.JournalMonitor("web@2.service", 1, ())
    m2.feed(entry("a", 3), 0)
    assert m2.feed(entry("b", 3), 61) is None


def test_journal_patterns_count_info_lines():
    m = monitors.JournalMonitor("web@2.service", 0, (r"Traceback|FATAL",))
    assert m.feed(entry("all good"), 0) is None
    assert "last error: FATAL: db gone" in m.feed(entry("FATAL: db gone"), 1)


def test_journal_suppressed_messages_count_as_errors_for_that_unit_only():
    m = monitors.JournalMonitor("web@2.service", 20, ())
    other = journald("Suppressed 500 messages from web@1.service", MESSAGE_ID=monitors.SUPPRESSED_MESSAGE_ID)
    assert m.feed(other, 0) is None
    ours = journald("Suppressed 37 messages from web@2.service", MESSAGE_ID=monitors.SUPPRESSED_MESSAGE_ID)
    assert "journal error rate 37/min" in m.feed(ours, 1)


def test_journal_counts_only_what_trusted_fields_say_comes_from_the_release():
    """Anyone may log UNIT=, MESSAGE_ID= or a PRIORITY that is not a number; none of it counts."""
    m = monitors.JournalMonitor("web@2.service", 0, ())
    forged = [
        {"MESSAGE": "fake", "PRIORITY": 3, "UNIT": "web@2.service", "_PID": 4242, "_SYSTEMD_UNIT": "session-3.scope"},
        {"MESSAGE": "Suppressed 999 messages from web@2.service", "PRIORITY": 6,
         "MESSAGE_ID": monitors.SUPPRESSED_MESSAGE_ID, "_TRANSPORT": "journal", "_PID": 4242},
        entry("odd priority", b"err"),
        entry("no priority", None),
    ]
    for i, e in enumerate(forged):
        assert m.feed(e, i) is None, e
    # systemd's own line about the unit (PID 1) does count
    assert "journal error rate 1/min" in m.feed(
        {"MESSAGE": "web@2.service: Failed", "PRIORITY": 3, "UNIT": "web@2.service", "_PID": 1,
         "_SYSTEMD_UNIT": "init.scope"}, 10)


def _metrics(values):
    async def unit_metrics(unit):
        return values
    return unit_metrics


def test_unit_monitor_reasons():
    systemd = FakeSystemd()
    asyncio.run(systemd.start("w@1.service"))
    base = asyncio.run(systemd.status("w@1.service"))
    assert monitors._unit_trip(base, 0) is None
    systemd.unit("w@1.service").result = "watchdog"
    assert monitors._unit_trip(asyncio.run(systemd.status("w@1.service")), 0).startswith("watchdog: w@1.service missed")
    systemd.unit("w@1.service").result = "success"
    systemd.crash("w@1.service")
    assert monitors._unit_trip(asyncio.run(systemd.status("w@1.service")), 0).startswith("crash: w@1.service restarted")


class Forever:
    name = "quiet"

    async def watch(self):
        await asyncio.Event().wait()


class TripsAfter:
    name = "tripper"

    def __init__(self, delay):
        self.delay = delay

    async def watch(self):
        await asyncio.sleep(self.delay)
        return "tripped"


class Broken:
    name = "broken"

    async def watch(self):
        raise OSError("journal unreadable")


def test_probation_outcomes():
    assert asyncio.run(monitors.probation([Forever()], 0.1, asyncio.Event())) is None
    assert asyncio.run(monitors.probation([Forever(), TripsAfter(0.05)], 5, asyncio.Event())) == "tripped"
    assert "broken monitor failed" in asyncio.run(monitors.probation([Broken()], 5, asyncio.Event()))

    async def aborted():
        abort = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, abort.set)
        return await monitors.probation([Forever()], 30, abort)

    assert asyncio.run(aborted()) == ""


def test_check_monitor_needs_consecutive_failures():
    results = iter([False, True, False, False, True])

    async def flaky(spec, target):
        return next(results), "flaky"

    spec = parse_checks([{"type": "command", "command": "true", "failures": 2, "interval_sec": 0.01}],
                        Path("a.toml"), ())[0]
    healthchecks._RUNNERS["command"], saved = flaky, healthchecks._RUNNERS["command"]
    try:
        trip = asyncio.run(monitors.CheckMonitor(spec, Target("a", "1.0.0", "a@1.0.0.service", _metrics({}))).watch())
    finally:
        healthchecks._RUNNERS["command"] = saved
    assert trip == "health check command#0 failed 2 times in a row: flaky"


def test_check_config_errors():
    with pytest.raises(ConfigError, match=r"health_check\[0\] of type memory needs 'memory_threshold_bytes'"):
        parse_checks([{"type": "memory"}], Path("a.toml"), ())
    with pytest.raises(ConfigError, match=r"key 'health_check\[0\].type': must be one of"):
        parse_checks([{"type": "ping"}], Path("a.toml"), ())
    with pytest.raises(ConfigError, match="unknown key 'health_check\\[0\\].interval'"):
        parse_checks([{"type": "tcp", "interval": 3}], Path("a.toml"), ())
    http = parse_checks([{"type": "http"}], Path("a.toml"), ("0.0.0.0:8080",))[0]
    assert http.url == "http://127.0.0.1:8080/health"


def _target(metrics=None):
    return Target("web", "1.0.0", "web@1.0.0.service", _metrics(metrics or {"memory": 100, "tasks": 2}))


async def _serve(status: int, body: bytes, delay: float = 0):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(delay)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("status, body, delay, check, ok, detail", [
    (200, b"ok", 0, {}, True, "HTTP 200"),
    (500, b"no", 0, {}, False, "HTTP 500 from"),
    (200, b"degraded", 0, {"body_match": "^ok$"}, False, "does not match"),
    (200, b"ok", 0.3, {"max_response_time_ms": 100}, False, "> 100 ms"),
    (200, b"ok", 0.3, {"timeout_sec": 0.1}, False, "no answer within 0.1 s"),
])
def test_http_check(status, body, delay, check, ok, detail):
    async def run():
        server, port = await _serve(status, body, delay)
        async with server:
            spec = parse_checks([{"type": "http", "url": f"http://127.0.0.1:{port}/health", **check}],
                                Path("a.toml"), ())[0]
            return await run_check(spec, _target())

    result = asyncio.run(run())
    assert result.ok is ok and detail in result.detail


def test_tcp_command_memory_tasks_checks(tmp_path):
    async def run():
        server, port = await _serve(200, b"")
        async with server:
            specs = parse_checks([
                {"type": "tcp", "address": f"127.0.0.1:{port}"},
                {"type": "tcp", "address": "127.0.0.1:1"},
                {"type": "command", "command": 'test "$BLOOM_VERSION" = 1.0.0'},
                {"type": "command", "command": "echo nope; exit 3"},
                {"type": "memory", "memory_threshold_bytes": 50},
                {"type": "tasks", "max_tasks": 5},
            ], Path("a.toml"), ())
            return [await run_check(s, _target()) for s in specs]

    tcp_ok, tcp_bad, cmd_ok, cmd_bad, mem, tasks = asyncio.run(run())
    assert tcp_ok.ok and not tcp_bad.ok and "ConnectionRefusedError" in tcp_bad.detail
    assert cmd_ok.ok and not cmd_bad.ok and cmd_bad.detail == "'echo nope; exit 3' exited with 3: nope"
    assert not mem.ok and mem.detail == "memory 100 bytes > 50"
    assert tasks.ok and tasks.detail == "2 tasks"
    unknown = asyncio.run(run_check(parse_checks([{"type": "memory", "memory_threshold_bytes": 1}], Path("a"), ())[0],
                                    _target({"memory": None, "tasks": None})))
    assert unknown.ok and "unavailable" in unknown.detail


def test_python_entry_point_check(tmp_path, monkeypatch):
    dist = tmp_path / "mychecks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mychecks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bloom_agent.health_checks]\nqueue = mychecks_mod:queue_ok\n")
    (tmp_path / "mychecks_mod.py").write_text(textwrap.dedent("""
        def queue_ok(target):
            return (target.version == "1.0.0", f"queue of {target.app} is short")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_checks([{"type": "python", "entry_point": "queue"}], Path("a.toml"), ())[0]
    result = asyncio.run(run_check(spec, _target()))
    assert result.ok and result.detail == "queue of web is short"
    missing = parse_checks([{"type": "python", "entry_point": "nope"}], Path("a.toml"), ())[0]
    assert "no entry point 'nope'" in asyncio.run(run_check(missing, _target())).detail
    sys.modules.pop("mychecks_mod", None)


class TripsAtOnce:
    name = "unit"

    async def watch(self):
        return "crash: already dead"


def test_probation_ends_when_a_release_is_dead_before_it_starts():
    """NEW may crash while the agent is still in the daemon-reload: the unit monitor trips on its first
    look, while an instant check (memory, tasks) is just completing. Python 3.11's wait_for swallows a
    cancellation that meets a finished inner task, which left such a check looping forever and
    probation waiting for it."""
    spec = parse_checks([{"type": "memory", "memory_threshold_bytes": 1 << 30, "interval_sec": 0.01}],
                        Path("a.toml"), ())[0]
    target = Target("a", "1.0.0", "a@1.0.0.service", _metrics({"memory": 100, "tasks": 2}))

    async def run():
        checks = [monitors.CheckMonitor(spec, target) for _ in range(3)]
        return await asyncio.wait_for(monitors.probation([*checks, TripsAtOnce()], 30, asyncio.Event()), 5)

    for _ in range(20):
        assert asyncio.run(run()) == "crash: already dead"


class IgnoresCancel:
    """Ignores cancellation for a while (long past MONITOR_STOP_SEC), then stops."""

    name = "stubborn"
    finished = False

    async def watch(self):
        until = asyncio.get_running_loop().time() + 0.5
        while asyncio.get_running_loop().time() < until:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass
        self.finished = True
        return "never read"


def test_probation_does_not_wait_forever_for_a_monitor_that_will_not_stop(monkeypatch, caplog):
    monkeypatch.setattr(monitors, "MONITOR_STOP_SEC", 0.1)

    stubborn = IgnoresCancel()

    async def run():
        trip = await monitors.probation([stubborn, TripsAtOnce()], 30, asyncio.Event())
        return trip, stubborn.finished

    trip, stubborn_had_finished = asyncio.run(run())
    assert trip == "crash: already dead" and not stubborn_had_finished
    assert "the stubborn monitor did not stop within 0.1 s" in caplog.text


def _scripted_check(results, interval=0.1, failures=3, timeout=0.05):
    """A CheckMonitor whose attempts answer from ``results`` (then keep answering the last one)."""
    answers = list(results)

    async def scripted(spec, target):
        return (answers.pop(0) if len(answers) > 1 else answers[0]), "scripted"

    spec = parse_checks([{"type": "command", "command": "true", "failures": failures, "interval_sec": interval,
                          "timeout_sec": timeout}], Path("a.toml"), ())[0]
    return monitors.CheckMonitor(spec, _target()), scripted


def _probation_with(check, runner, seconds):
    extensions = []
    healthchecks._RUNNERS["command"], saved = runner, healthchecks._RUNNERS["command"]
    try:
        trip = asyncio.run(monitors.probation([check], seconds, asyncio.Event(),
                                              lambda secs, why: extensions.append((secs, why))))
    finally:
        healthchecks._RUNNERS["command"] = saved
    return trip, extensions


def test_probation_is_extended_until_a_failing_check_trips():
    """The window (0.15 s) ends after two failures of three: the check must still reach its verdict."""
    check, runner = _scripted_check([False])
    trip, extensions = _probation_with(check, runner, 0.15)
    assert trip == "health check command#0 failed 3 times in a row: scripted"
    assert len(extensions) == 1 and "command#0 failing (" in extensions[0][1]
    assert extensions[0][0] <= check.spec.time_to_trip


def test_probation_extension_ends_when_the_check_recovers():
    check, runner = _scripted_check([False, False, True])
    trip, extensions = _probation_with(check, runner, 0.15)
    assert trip is None and len(extensions) == 1


class StaysInDoubt:
    """A check that never settles (its attempts outlast what its settings allow)."""

    name = "health check stuck"
    consecutive, in_doubt, verdict_within = 1, True, 0.2

    def doubt(self):
        return "stuck failing (1/3): no answer"

    async def watch(self):
        await asyncio.Event().wait()


def test_probation_extension_is_bounded():
    extensions = []
    trip = asyncio.run(monitors.probation([StaysInDoubt()], 0.05, asyncio.Event(),
                                          lambda secs, why: extensions.append((secs, why))))
    assert trip == "health check still failing when probation's extension ended: stuck failing (1/3): no answer"
    assert extensions == [(0.2, "stuck failing (1/3): no answer")]


def test_probation_without_doubt_ends_on_time():
    check, runner = _scripted_check([True])
    trip, extensions = _probation_with(check, runner, 0.1)
    assert trip is None and extensions == []


def test_time_to_trip():
    spec = parse_checks([{"type": "tcp", "address": "127.0.0.1:1", "interval_sec": 2, "timeout_sec": 2,
                          "failures": 3}], Path("a.toml"), ())[0]
    assert spec.time_to_trip == 3 * (2 + 2) + TRIP_SLACK_SEC


class FakeReader:
    """A journal reader over a list of entries (bytes values, as python3-systemd gives them), with
    libsystemd's match rules: within a term, values of one field are ORed and different fields
    ANDed; terms are ORed. ``fileno`` is a pipe: writing to it is journald saying "new entries"."""

    def __init__(self, entries=()):
        self.entries, self.pos, self.terms = list(entries), 0, [[]]
        self.rfd, self.wfd = os.pipe()
        self.current = None
        self.processed = 0

    def add_match(self, *matches):
        self.terms[-1].extend(matches)

    def add_disjunction(self):
        self.terms.append([])

    def _matches(self, entry):
        def term_ok(term):
            fields = {}
            for m in term:
                field, value = m.split("=", 1)
                fields.setdefault(field, set()).add(value.encode())
            return all(entry.get(f) in values for f, values in fields.items())
        return any(term_ok(t) for t in self.terms if t)

    def _next(self):
        while self.pos < len(self.entries):
            self.current = self.entries[self.pos]
            self.pos += 1
            if self._matches(self.current):
                return True
        return False

    def _get(self, field):
        return self.current[field]

    def log(self, **fields):
        self.entries.append({k: str(v).encode() for k, v in fields.items()})
        os.write(self.wfd, b"x")

    def fileno(self):
        return self.rfd

    def process(self):
        os.read(self.rfd, 4096)
        self.processed += 1

    def close(self):
        os.close(self.rfd)
        os.close(self.wfd)


def _reader_for(monitor, entries=()):
    reader = FakeReader(entries)
    for i, term in enumerate(monitors.journal_matches(monitor.unit, bool(monitor.patterns))):
        if i:
            reader.add_disjunction()
        reader.add_match(*term)
    return reader


FORGED = [  # what any local process can log about web@2.service
    {"MESSAGE": "fake", "PRIORITY": "3", "UNIT": "web@2.service", "_PID": "4242", "_SYSTEMD_UNIT": "session-3.scope"},
    {"MESSAGE": "Suppressed 999 messages from web@2.service", "PRIORITY": "6", "_TRANSPORT": "journal",
     "MESSAGE_ID": monitors.SUPPRESSED_MESSAGE_ID, "_PID": "4242", "_SYSTEMD_UNIT": "session-3.scope"},
    {"MESSAGE": "odd", "PRIORITY": "err", "_SYSTEMD_UNIT": "web@2.service", "_PID": "77"},
]


def _raw(**fields):
    return {k: str(v).encode() for k, v in fields.items()}


def test_journal_matches_leave_out_what_cannot_count():
    """The matches are the first filter: warnings (without patterns) and forged lines never leave libsystemd."""
    m = monitors.JournalMonitor("web@2.service", 0, ())
    warning = _raw(MESSAGE="slow", PRIORITY=4, _SYSTEMD_UNIT="web@2.service", _PID=77)
    error = _raw(MESSAGE="boom", PRIORITY=3, _SYSTEMD_UNIT="web@2.service", _PID=77)
    systemd_line = _raw(MESSAGE="web@2.service: Failed", PRIORITY=3, UNIT="web@2.service", _PID=1,
                        _SYSTEMD_UNIT="init.scope")
    suppressed = _raw(MESSAGE="Suppressed 37 messages from web@2.service", PRIORITY=6, _TRANSPORT="driver",
                      MESSAGE_ID=monitors.SUPPRESSED_MESSAGE_ID, _PID=99)
    other_unit = _raw(MESSAGE="boom", PRIORITY=3, _SYSTEMD_UNIT="web@1.service", _PID=66)
    forged = [{k: v.encode() for k, v in e.items()} for e in FORGED]
    reader = _reader_for(m, [warning, error, *forged, systemd_line, other_unit, suppressed])
    seen = [e["MESSAGE"] for e in monitors.read_entries(reader, "web@2.service")]
    assert seen == ["boom", "web@2.service: Failed", "Suppressed 37 messages from web@2.service"]

    # With error patterns every line of the release is read, whatever its priority; still no forged one.
    p = monitors.JournalMonitor("web@2.service", 0, ("slow",))
    reader = _reader_for(p, [warning, *forged, other_unit])
    assert [e["MESSAGE"] for e in monitors.read_entries(reader, "web@2.service")] == ["slow", "odd"]


def test_forged_lines_do_not_count_even_past_the_matches():
    """_count is the second filter: were the matches wider, a forged line would still not count."""
    m = monitors.JournalMonitor("web@2.service", 0, ())
    for i, e in enumerate(FORGED):
        assert m.feed(e, i) is None, e


def test_read_entries_decodes_only_the_fields_that_count():
    ours = _raw(MESSAGE="caf\u00e9", PRIORITY=3, _SYSTEMD_UNIT="web@2.service", _PID=7, _BOOT_ID="ab" * 16,
                _TRANSPORT="stdout", CODE_FILE="app.py", __REALTIME_TIMESTAMP=1)
    ours["MESSAGE"] += b"\xff"
    systemds = _raw(MESSAGE="web@2.service: Failed", PRIORITY=3, UNIT="web@2.service", _PID=1,
                    _SYSTEMD_UNIT="init.scope", _TRANSPORT="journal", CODE_FILE="unit.c")
    reader = FakeReader([ours, systemds])
    reader.add_match("PRIORITY=3")
    first, second = monitors.read_entries(reader, "web@2.service")
    # the release's own line: where it comes from is settled by _SYSTEMD_UNIT, nothing more is read
    assert first == {"MESSAGE": "caf\u00e9\ufffd", "PRIORITY": "3", "_SYSTEMD_UNIT": "web@2.service"}
    assert second == {"MESSAGE": "web@2.service: Failed", "PRIORITY": "3", "UNIT": "web@2.service", "_PID": "1",
                      "_SYSTEMD_UNIT": "init.scope", "_TRANSPORT": "journal"}


def test_journal_monitor_reads_on_wakeup_and_trips(monkeypatch):
    m = monitors.JournalMonitor("web@2.service", 2, ())
    reader = _reader_for(m, [_raw(MESSAGE="early", PRIORITY=2, _SYSTEMD_UNIT="web@2.service")])
    monkeypatch.setattr(m, "_open", lambda: reader)

    async def run():
        task = asyncio.ensure_future(m.watch())
        for i in range(3):
            while not task.done() and m.entries_read < i + 1:  # the monitor has read what was there
                await asyncio.sleep(0.01)
            if task.done():
                break
            reader.log(MESSAGE=f"noise {i}", PRIORITY=6, _SYSTEMD_UNIT="web@2.service")
            reader.log(MESSAGE=f"boom {i}", PRIORITY=3, _SYSTEMD_UNIT="web@2.service")
        return await task

    trip = asyncio.run(run())
    assert trip == "journal error rate 3/min > 2/min for web@2.service; last error: boom 1"
    assert m.entries_read == 3 and reader.processed >= 1 and m.wakeups >= 1


def test_journal_window_keeps_a_running_count():
    m = monitors.JournalMonitor("web@2.service", 100, ())
    for t in range(50):
        m.feed(entry(f"e{t}", 3), t)
    assert m.rate == len(m.window) == 50
    m.feed(entry("late", 6), 90)  # everything up to t=30 has left the minute
    assert m.rate == len(m.window) == 19
