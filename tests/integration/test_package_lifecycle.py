"""Upgrade and purge of the package on real systemd. Runs last: it removes and reinstalls."""

import json
import os

import pytest

from machine import make_upgrade_deb
from test_agent_package import show, status_json

pytestmark = pytest.mark.usefixtures("installed")


def test_upgrade_keeps_state_and_control_socket(machine, deb, tmp_path):
    host = machine.host
    starts_before = status_json(host)["agent"]["starts"]
    socket_since = show(host, "bloom-agent.socket", "ActiveEnterTimestampMonotonic")
    version = host.check_output("dpkg-query -W -f '${Version}' bloom-agent")
    upgrade = make_upgrade_deb(deb, f"{version}+upgrade1", tmp_path)
    machine.put(upgrade, f"/root/{os.path.basename(upgrade)}")
    out = host.run(f"apt-get install -y --allow-downgrades /root/{os.path.basename(upgrade)}")
    assert out.rc == 0, out.stdout + out.stderr
    assert host.check_output("dpkg-query -W -f '${Version}' bloom-agent") == f"{version}+upgrade1"
    # The socket unit was not restarted: clients never saw it go away.
    assert show(host, "bloom-agent.socket", "ActiveEnterTimestampMonotonic") == socket_since
    status = status_json(host)
    assert status["agent"]["starts"] == starts_before + 1, "state kept and the new agent started once"
    assert host.service("bloom-agent").is_running


def test_purge_leaves_nothing_behind(machine, deb):
    host = machine.host
    status_json(host)
    out = host.run("apt-get purge -y bloom-agent")
    assert out.rc == 0, out.stdout + out.stderr
    for path in ("/etc/bloom", "/var/lib/bloom", "/run/bloom", "/usr/bin/bloomctl", "/usr/bin/bloom-agent",
                 "/lib/systemd/system/bloom-agent.service", "/lib/systemd/system/bloom-agent.socket",
                 "/usr/lib/python3/dist-packages/bloom_agent", "/usr/lib/sysusers.d/bloom-agent.conf",
                 "/etc/systemd/system/multi-user.target.wants/bloom-agent.service",
                 "/etc/systemd/system/sockets.target.wants/bloom-agent.socket"):
        assert not host.file(path).exists, f"{path} left behind by purge"
    leftovers = host.run("find / -xdev \\( -name '*bloom-agent*' -o -name 'bloom_agent*' \\) -not -path '/root/*' -not -path '/proc/*'")
    assert leftovers.stdout.strip() == ""
    assert host.run("systemctl is-active bloom-agent.service").stdout.strip() in ("inactive", "unknown")
    # Put it back for anything that runs after.
    machine.put(deb, f"/root/{os.path.basename(deb)}")
    out = host.run(f"apt-get install -y /root/{os.path.basename(deb)}")
    assert out.rc == 0, out.stdout + out.stderr
    assert host.service("bloom-agent").is_running
