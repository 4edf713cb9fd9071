#!/bin/bash
# Runs inside the VM, as root (Vagrant's shell provisioner): installs the bloom-agent package
# given as $1 with apt, and curl and wrk, which the integration tests use inside the machine;
# then checks that the agent runs.
#
# Offline when it can be: the locally built test box (vagrant/build-box.sh) has every
# dependency already and no apt lists. Only when something is missing (the public box) are
# the package lists fetched from the box's mirror.
set -euo pipefail

deb=${1:?usage: provision.sh /path/to/bloom-agent_VERSION_all.deb}
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q --no-install-recommends -o Dpkg::Use-Pty=0)

fetched=''
fetch_lists() {
    [ -n "$fetched" ] && return 0
    echo "bloom-agent: fetching package lists (dependencies to download)"
    apt-get update -q
    fetched=1
}

if ! command -v curl >/dev/null || ! command -v wrk >/dev/null; then
    fetch_lists
    apt-get install "${apt_opts[@]}" curl wrk
fi
# --reinstall: a rebuilt package of the same version replaces the one installed before.
# First with the package lists the machine has (none in the local box): apt stops before
# changing anything when a dependency cannot be had that way.
if ! apt-get install "${apt_opts[@]}" --reinstall "$deb"; then
    [ -n "$fetched" ] && exit 1
    fetch_lists
    apt-get install "${apt_opts[@]}" --reinstall "$deb"
fi
rm -f "$deb"  # nothing of ours outside the package (the purge test looks for leftovers)

# The package enables and starts both units; wait for READY (Type=notify).
for _ in $(seq 120); do
    systemctl is-active --quiet bloom-agent.service && break
    sleep 0.5
done
if ! systemctl is-active --quiet bloom-agent.service; then
    echo "bloom-agent: the agent is not active after installing $deb" >&2
    systemctl status --no-pager bloom-agent.socket bloom-agent.service >&2 || true
    journalctl -b --no-pager -n 50 -u bloom-agent >&2 || true
    exit 1
fi
bloomctl status
