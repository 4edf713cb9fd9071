"""Upgrade and purge of the package on real systemd. Runs last: it removes and reinstalls."""

import json
import os

import pytest

from machine import make_upgrade_deb
from test_switch import make_release
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


def test_purge_leaves_nothing_behind(machine, deb, tmp_path):
    host = machine.host
    status_json(host)
    # An app deployed, with a drop-in of the administrator's own: purge takes the app down too.
    built = make_release("1.0.0", tmp_path)
    machine.put(built, "/root/purgeme-1.0.0.tar.gz")
    host.check_output("mkdir -p /etc/bloom/apps /etc/systemd/system/purgeme.socket.d && printf "
                      "'listen = [\"127.0.0.1:8099\"]\nexec = \"bin/sampleapp\"\nprobation_sec = 1\n' "
                      "> /etc/bloom/apps/purgeme.toml && printf '[Socket]\nBacklog=64\n' > "
                      "/etc/systemd/system/purgeme.socket.d/admin.conf && bloomctl reload")
    deployed = host.run("bloomctl deploy purgeme /root/purgeme-1.0.0.tar.gz")
    assert deployed.rc == 0, deployed.stderr
    out = host.run("apt-get purge -y bloom-agent")
    assert out.rc == 0, out.stdout + out.stderr
    assert "took app purgeme off this host" in out.stdout
    assert host.run("curl -sS --max-time 5 http://127.0.0.1:8099/").rc != 0, "the app's socket is closed"
    assert host.check_output("systemctl list-units --all --no-legend --plain 'purgeme*'") == ""
    for path in ("/etc/systemd/system/purgeme.socket", "/etc/systemd/system/purgeme@.service",
                 "/etc/systemd/system/purgeme.socket.d/50-bloom-release.conf",
                 "/etc/systemd/system/sockets.target.wants/purgeme.socket"):
        assert not host.file(path).exists, f"{path} left behind by purge"
    assert host.file("/etc/systemd/system/purgeme.socket.d/admin.conf").exists, "the admin's own drop-in stays"
    host.check_output("rm -rf /etc/systemd/system/purgeme.socket.d && systemctl daemon-reload")
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
