"""Without a D-Bus system bus the agent refuses to run, and systemd does not restart it in a loop."""

import pytest

from test_agent_package import show

pytestmark = pytest.mark.usefixtures("installed")

# One command on the machine: with dbus stopped, a new ssh session may wait for logind over the bus.
WITHOUT_BUS = """
set -u
systemctl stop bloom-agent.service
systemctl stop dbus.socket dbus.service
# A cursor, not a time: --since counts whole seconds, and the agent may have started and stopped
# within the second before this one.
cursor=$(journalctl -n 1 --show-cursor -q -o cat | sed -n 's/^-- cursor: //p')
systemctl start bloom-agent.service; echo "start=$?"
sleep 3  # past RestartSec=1s: a restart loop would show in NRestarts
systemctl show bloom-agent.service -p ExecMainStatus -p NRestarts -p ActiveState
journalctl -u bloom-agent.service --after-cursor "$cursor" --no-pager -o cat | sed 's/^/journal: /'
systemctl start dbus.socket dbus.service
systemctl reset-failed bloom-agent.service
systemctl start bloom-agent.service; echo "restarted=$?"
"""


def test_without_a_system_bus_the_agent_refuses_to_run_and_is_not_restarted(machine):
    host = machine.host
    out = host.run(WITHOUT_BUS)
    lines = out.stdout.splitlines()
    assert "start=1" in lines, out.stdout + out.stderr
    assert {"ExecMainStatus=69", "NRestarts=0", "ActiveState=failed"} <= set(lines), out.stdout
    assert any("refusing to start: systemd cannot be reached over the D-Bus system bus" in line for line in lines), \
        out.stdout
    assert not any("no apps configured" in line or "ready (config" in line for line in lines), out.stdout
    assert "restarted=0" in lines, out.stdout
    assert show(host, "bloom-agent", "ActiveState")["ActiveState"] == "active"
    assert host.run("bloomctl status").rc in (0, 3)
