"""Fixtures for tests on a real systemd machine.

By default a fresh systemd-nspawn machine is booted for the session (needs root,
mmdebstrap, systemd-container). With testinfra's ``--hosts ssh://NAME [--ssh-config FILE]``
the tests run on that host instead (e.g. the Vagrant VM: ``vagrant ssh-config > cfg``).
"""

import os
import signal
import threading
from pathlib import Path

import pytest

import machine as harness

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.machine)


def _say(config):
    """Progress messages that show even while output is captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def say(message):
        if reporter and capture:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"[machine] {message}")

    return say


def require_nspawn():
    """Fail (CI must never silently skip) when this host cannot boot a machine."""
    problems = harness.missing_prerequisites()
    if problems:
        pytest.fail("the integration tests boot a systemd-nspawn machine, but: "
                    + "; ".join(problems)
                    + " (or point them at a host with --hosts ssh://NAME --ssh-config FILE)",
                    pytrace=False)


def ssh_mode(config) -> bool:
    return bool(config.option.hosts)


@pytest.fixture(scope="session")
def machine(request):
    """The machine under test: an SshMachine for the first of --hosts, otherwise a
    fresh NspawnMachine, destroyed at the end of the session."""
    config = request.config
    if ssh_mode(config):
        yield harness.SshMachine(config.option.hosts.split(",")[0], config.option.ssh_config)
        return
    require_nspawn()
    say = _say(config)
    harness.cleanup_leftovers(log=say)
    m = harness.NspawnMachine(progress=say)
    with _sigterm_as_interrupt():
        try:
            m.boot()  # destroys what it made on failure
        except harness.MachineError as e:
            pytest.fail(f"could not boot the test machine: {e}", pytrace=False)
        try:
            yield m
        finally:
            m.destroy()


@pytest.fixture(scope="session")
def nspawn_only(request):
    """For tests that boot nspawn machines of their own: skipped with --hosts."""
    if ssh_mode(request.config):
        pytest.skip("boots its own nspawn machines; not with --hosts")
    require_nspawn()


@pytest.fixture(scope="session")
def host(machine):
    """testinfra's ``host``, pointed at the machine under test."""
    return machine.host


@pytest.fixture(scope="session")
def deb():
    """The package under test: $BLOOM_DEB, or the newest dist/bloom-agent_*_all.deb."""
    if os.environ.get("BLOOM_DEB"):
        path = Path(os.environ["BLOOM_DEB"])
        if not path.is_file():
            pytest.fail(f"BLOOM_DEB={path} is not a file", pytrace=False)
        return path.resolve()
    debs = sorted(REPO.glob("dist/bloom-agent_*_all.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        pytest.fail(f"no bloom-agent_*_all.deb in {REPO / 'dist'}; build it with: make deb",
                    pytrace=False)
    return debs[-1]


@pytest.fixture(scope="session")
def installed(machine, request):
    """The machine with the package installed by apt (offline: all its dependencies are
    in the machine already). On an ssh host it is reinstalled, in case an older build of
    the same version is there. With $BLOOM_PREINSTALLED (the autopkgtest, whose runner has
    installed the package under test) the package found there is the one tested."""
    if os.environ.get("BLOOM_PREINSTALLED"):
        proc = machine.run(["dpkg-query", "-W", "-f", "${Status}", "bloom-agent"])
        assert proc.stdout == "install ok installed", f"BLOOM_PREINSTALLED, but bloom-agent is not: {proc.stdout}"
        return machine
    deb = request.getfixturevalue("deb")
    machine.put(deb, "/root/")
    again = ["--reinstall"] if isinstance(machine, harness.SshMachine) else []
    proc = machine.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                        *again, f"/root/{deb.name}"], timeout=600)
    assert proc.returncode == 0, (
        f"apt-get install {deb.name} failed with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return machine


class _sigterm_as_interrupt:
    """While a machine runs, SIGTERM (a CI timeout) unwinds like Ctrl-C, so the machine
    is destroyed instead of left behind (a SIGKILL leaves it to cleanup_leftovers)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


# What the agent saw, attached to every failed test: the journal is the first thing anyone asks for.
DIAGNOSTICS = ("bloomctl status; echo; systemctl list-units --no-pager --plain 'bloom-agent*' '*@*.service' '*.socket'; "
               "echo; journalctl --no-pager -o short-monotonic -n 80 -u bloom-agent -u 'web*' -u 'api*'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    m = item.funcargs.get("machine") if hasattr(item, "funcargs") else None
    if report.failed and report.when == "call" and m is not None:
        try:
            out = m.host.run(DIAGNOSTICS)
            report.sections.append(("machine: agent status and journal", out.stdout + out.stderr))
        except Exception as exc:  # the machine may be what broke
            report.sections.append(("machine: agent status and journal", f"unavailable: {exc!r}"))
