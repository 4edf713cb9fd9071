#!/bin/bash
# `make vagrant-test`: the integration tests in a whole VM (Vagrant + vagrant-libvirt), from a
# fresh Debian 12 host, as root, with or without systemd as PID 1.
#
#  1. installs vagrant, vagrant-libvirt, libvirt and qemu from Debian (only what is missing);
#  2. starts virtlogd and libvirtd when nothing runs them (no systemd);
#  3. removes what a killed earlier run left behind (VM, network, storage pool, daemons);
#  4. picks the box: $BLOOM_VAGRANT_BOX, else the public debian/bookworm64 if it can be had,
#     else a local box built by vagrant/build-box.sh (cached, rebuilt when its inputs change);
#  5. `vagrant up` (vagrant/test/Vagrantfile: the project's Vagrantfile plus our own names),
#     which installs the .deb with apt and starts the agent;
#  6. runs tests/integration against the VM through `vagrant ssh-config`;
#  7. always, also on failure, Ctrl-C or SIGTERM: `vagrant destroy -f`, then removes every
#     libvirt object of ours, stops the daemons it started and the iptables chains they made.
#
# Loud on failure: a VM that does not come up prints the end of its serial console, a failed
# test run prints the agent's journal from the VM. Logs of the last run: $RUN (below).
#
# Environment (all optional):
#   BLOOM_DEB                 the package (default: the newest dist/bloom-agent_*_all.deb)
#   BLOOM_VAGRANT_TESTS       pytest -k expression choosing the tests ("all": every test)
#   BLOOM_VAGRANT_BOX         use this box, do not look for another
#   BLOOM_VAGRANT_LOCAL_BOX=1 use the locally built box even if the public one can be had
#   BLOOM_VAGRANT_DRIVER      kvm or qemu (default: kvm where the CPU has VMX/SVM, else qemu)
#   BLOOM_VAGRANT_CPUS, BLOOM_VAGRANT_MEMORY   as in the Vagrantfile (2, 1024)
#   BLOOM_VAGRANT_SUBNET      the test network (default 192.168.239.0/24)
#   BLOOM_TEST_CACHE          cache directory (default /var/cache/bloom-agent-tests)
#   PYTEST_ARGS               more pytest arguments
#   BLOOM_VAGRANT_TIMEOUT     seconds for everything but the clean-up (default 1200)
#   BLOOM_VAGRANT_KEEP=1      for debugging: leave the VM (and libvirtd) running at the end;
#                             `make vagrant-clean` (vagrant/test.sh clean) removes them
#
#   vagrant/test.sh [run]     everything above
#   vagrant/test.sh box       only build (or find) the local box
#   vagrant/test.sh clean     only remove what a killed run left behind
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
NAME=bloom-vagrant-test
CACHE=${BLOOM_TEST_CACHE:-/var/cache/bloom-agent-tests}/vagrant
RUN=/var/tmp/$NAME               # this run: vagrant's dot directory, pool, logs
STATE=/run/$NAME                 # daemons this script started (gone with a reboot, as they are)
LOCK=/run/lock/$NAME.lock
PUBLIC_BOX=debian/bookworm64
# The subset run by default (see docs/testing.md): install, agent active under systemd, a
# deploy, a zero-downtime switch under load, an automatic rollback, and a real reboot during
# probation. About 4-5 minutes under software emulation; "all" takes much longer.
DEFAULT_TESTS="test_systemd_is_pid_1 or test_agent_active_after_apt_install or test_type_notify \
or test_bloomctl_status_for_root or test_first_deploy or test_switch_under_load \
or test_crash_during_probation or test_release_dead_before_probation or test_reboot_during_probation"
HOST_PACKAGES=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu
               libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base iptables ebtables
               openssh-client mmdebstrap e2fsprogs curl)
# Debian's tools and interpreter only (no venv or pyenv shims)
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin

export VAGRANT_HOME=$CACHE/home  # not /root/.vagrant.d: qemu (libvirt-qemu) reads the box's kernel
export VAGRANT_CWD=$REPO/vagrant/test
export VAGRANT_DOTFILE_PATH=$RUN/dot
export VAGRANT_DEFAULT_PROVIDER=libvirt VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_BOX_UPDATE_CHECK_DISABLE=1 VAGRANT_NO_COLOR=1
export LIBVIRT_DEFAULT_URI=qemu:///system
export BLOOM_VAGRANT_PREFIX=$NAME- BLOOM_VAGRANT_NETWORK=$NAME BLOOM_VAGRANT_POOL=$NAME
export BLOOM_VAGRANT_SUBNET=${BLOOM_VAGRANT_SUBNET:-192.168.239.0/24}
export BLOOM_VAGRANT_SERIAL_LOG=$RUN/serial.log
DOMAIN=${BLOOM_VAGRANT_PREFIX}default
SSH_CONFIG=$RUN/ssh-config

T0=$SECONDS
TIMEOUT=${BLOOM_VAGRANT_TIMEOUT:-1200}  # everything but the clean-up (a hard cap for CI)
DEADLINE=$((T0 + TIMEOUT))
say() { printf '[vagrant-test %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
phase_start=$SECONDS
TIMINGS=()
phase() {  # phase NAME: the end of the previous phase and the start of the next
    [ -n "${phase_name:-}" ] && TIMINGS+=("$(printf '%-12s %4d s' "$phase_name" $((SECONDS - phase_start)))")
    phase_name=$1 phase_start=$SECONDS
    [ -n "$1" ] && say "== $1"
    return 0
}

# --------------------------------------------------------------------- processes

proc_start() { [ -r "/proc/$1/stat" ] && awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }
alive() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && [ "$(proc_start "$1")" = "$2" ]; }  # alive PID STARTTIME

child='' child_start=''
# run LIMIT CMD...: CMD under timeout(1), in a process group of its own (a Ctrl-C in the
# terminal reaches this script, which then ends the group in order); timeout ends the whole
# group after LIMIT seconds. The group's pid is recorded, so that the next run can end it if
# this script is killed.
run() {
    local limit=$1 rc=0; shift
    # before the clean-up, no step runs past the run's deadline
    if [ -z "${cleaning:-}" ] && [ $((DEADLINE - SECONDS)) -lt "$limit" ]; then
        limit=$((DEADLINE - SECONDS))
        [ "$limit" -gt 0 ] || { say "out of time (BLOOM_VAGRANT_TIMEOUT=$TIMEOUT s)"; return 124; }
    fi
    setsid timeout -k 20 "$limit" "$@" 7>&- 8>&- 9>&- &
    child=$! child_start=$(proc_start $!)
    echo "$child $child_start" > "$RUN/child"
    # a signal with a trap that returns (during the clean-up) interrupts wait: wait again
    while :; do
        rc=0
        wait "$child" || rc=$?
        alive "$child" "$child_start" || break
    done
    child=''
    rm -f "$RUN/child"
    [ $rc -eq 124 ] && say "timed out after $limit s: $*"
    return $rc
}

end_group() {  # end_group PID STARTTIME: TERM, then KILL, the process group led by PID
    local pid=$1 start=$2
    alive "$pid" "$start" || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" "$start" || return 0; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

# --------------------------------------------------------------------- host

install_host_packages() {
    local p missing=()
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null || say "apt-get update reported errors (a third-party source?); installing anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Use-Pty=0 "${missing[@]}" > "$CACHE/apt.log" 2>&1 ||
        { tail -n 30 "$CACHE/apt.log" >&2; die "apt-get install failed (log: $CACHE/apt.log)"; }
}

systemd_runs() { [ -d /run/systemd/system ]; }

daemon_pid() {  # the running DAEMON (libvirtd, virtlogd), from its pid file
    local pid
    pid=$(cat "/run/$1.pid" 2>/dev/null) || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "/usr/sbin/$1" ] && echo "$pid"
}

start_daemons() {
    if systemd_runs; then
        systemctl start virtlogd.socket libvirtd.service
    else
        # Without udev /dev/kvm stays root:root 0600, and libvirt then probes qemu's
        # capabilities again on every lookup (each define or start takes ~50 s). Debian's
        # udev rule would make it root:kvm 0660.
        if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
            chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
        fi
        mkdir -p "$STATE"
        local d pid
        for d in virtlogd libvirtd; do
            daemon_pid $d >/dev/null && continue
            "/usr/sbin/$d" -d 7>&- 8>&- 9>&- </dev/null >/dev/null 2>&1
            for _ in $(seq 50); do pid=$(daemon_pid $d) && break; sleep 0.1; done
            [ -n "$pid" ] || die "$d did not start"
            echo "$pid $(proc_start "$pid")" > "$STATE/$d"
            say "started $d (pid $pid)"
        done
    fi
    for _ in $(seq 60); do virsh version >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "libvirtd does not answer: $(virsh version 2>&1 | tail -n 1)"
}

# Stop the daemons this script started (now or in a killed run), unless something else
# runs in them; then remove the iptables chains libvirt made for the network: they outlive
# libvirtd, and libvirtd only makes them when they are missing.
stop_daemons() {
    local d pid start ours=''
    [ -f "$STATE/libvirtd" ] && ours=1
    for d in libvirtd virtlogd; do
        [ -f "$STATE/$d" ] || continue
        read -r pid start < "$STATE/$d" || true
        if alive "$pid" "$start"; then
            if [ $d = libvirtd ] && [ -n "$(virsh list --name 2>/dev/null; virsh net-list --name 2>/dev/null)" ]; then
                say "leaving libvirtd (pid $pid) running: VMs or networks of others run in it"
                return 0
            fi
            kill -TERM "$pid"
            for _ in $(seq 100); do alive "$pid" "$start" || break; sleep 0.1; done
            if alive "$pid" "$start"; then
                say "$d (pid $pid) did not stop; killing it"
                kill -KILL "$pid"
            fi
        fi
        rm -f "$STATE/$d"
    done
    if [ -n "$ours" ] && ! daemon_pid libvirtd >/dev/null; then
        remove_libvirt_chains
    fi
}

remove_libvirt_chains() {
    local ipt table rule chain chains
    for ipt in iptables ip6tables; do
        command -v $ipt >/dev/null || continue
        for table in filter nat mangle; do
            chains=$($ipt -w -t $table -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^LIBVIRT_/ {print $2}')
            [ -n "$chains" ] || continue
            $ipt -w -t $table -S | grep -E '^-A [A-Z]+ .*-j LIBVIRT_' | while read -r rule; do
                # shellcheck disable=SC2086
                $ipt -w -t $table -D ${rule#-A }
            done
            for chain in $chains; do $ipt -w -t $table -F "$chain"; done
            for chain in $chains; do $ipt -w -t $table -X "$chain"; done
        done
    done
}

# --------------------------------------------------------------------- libvirt objects of ours

remove_libvirt_objects() {
    local dom vol
    for dom in $(virsh list --all --name | grep "^${BLOOM_VAGRANT_PREFIX}" || true); do
        say "removing VM $dom"
        virsh destroy "$dom" >/dev/null 2>&1 || true
        virsh undefine --nvram "$dom" >/dev/null 2>&1 || virsh undefine "$dom" >/dev/null
    done
    if virsh net-info "$BLOOM_VAGRANT_NETWORK" >/dev/null 2>&1; then
        say "removing network $BLOOM_VAGRANT_NETWORK"
        virsh net-destroy "$BLOOM_VAGRANT_NETWORK" >/dev/null 2>&1 || true
        virsh net-undefine "$BLOOM_VAGRANT_NETWORK" >/dev/null
    fi
    if virsh pool-info "$BLOOM_VAGRANT_POOL" >/dev/null 2>&1; then
        say "removing storage pool $BLOOM_VAGRANT_POOL"
        virsh pool-start "$BLOOM_VAGRANT_POOL" >/dev/null 2>&1 || true
        for vol in $(virsh vol-list "$BLOOM_VAGRANT_POOL" 2>/dev/null | awk 'NR > 2 && NF {print $1}'); do
            virsh vol-delete --pool "$BLOOM_VAGRANT_POOL" "$vol" >/dev/null
        done
        virsh pool-destroy "$BLOOM_VAGRANT_POOL" >/dev/null 2>&1 || true
        virsh pool-undefine "$BLOOM_VAGRANT_POOL" >/dev/null
    fi
    rm -rf "$VAGRANT_DOTFILE_PATH" "$RUN/pool"
}

create_pool() {
    mkdir -p "$RUN/pool"
    virsh pool-define-as "$BLOOM_VAGRANT_POOL" dir --target "$RUN/pool" >/dev/null
    virsh pool-start "$BLOOM_VAGRANT_POOL" >/dev/null
}

# Everything of ours, whether this run made it or a killed one did. With "keep", the
# daemons stay up (for the run about to start).
clean_up() {
    local pid start
    if [ -f "$RUN/child" ]; then
        read -r pid start < "$RUN/child" && end_group "$pid" "$start"
        rm -f "$RUN/child"
    fi
    if [ -f "$SSH_CONFIG" ]; then
        ssh -F "$SSH_CONFIG" -O exit default >/dev/null 2>&1 || true
    fi
    if virsh version >/dev/null 2>&1; then
        remove_libvirt_objects
    else
        rm -rf "$VAGRANT_DOTFILE_PATH" "$RUN/pool"
    fi
    [ "${1:-}" = keep ] || stop_daemons
}

# --------------------------------------------------------------------- box

driver() {
    if [ -n "${BLOOM_VAGRANT_DRIVER:-}" ]; then echo "$BLOOM_VAGRANT_DRIVER"
    elif [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then echo kvm
    else echo qemu  # software emulation (TCG): no VMX/SVM, e.g. the KVM-PVM of CI machines
    fi
}

box_dir() { echo "$VAGRANT_HOME/boxes/${1//\//-VAGRANTSLASH-}"; }
have_box() { compgen -G "$(box_dir "$1")/*/libvirt/metadata.json" >/dev/null; }

choose_box() {
    if [ -n "${BLOOM_VAGRANT_BOX:-}" ]; then
        BOX=$BLOOM_VAGRANT_BOX
        return
    fi
    if [ "${BLOOM_VAGRANT_LOCAL_BOX:-}" != 1 ]; then
        if have_box "$PUBLIC_BOX"; then
            BOX=$PUBLIC_BOX
            return
        fi
        if curl -fsSL -m 15 -o /dev/null -H 'Accept: application/json' "https://vagrantcloud.com/$PUBLIC_BOX" 2>/dev/null; then
            say "downloading $PUBLIC_BOX"
            if run 900 vagrant box add --provider libvirt "$PUBLIC_BOX" > >(vagrant_log "$RUN/box.log") 2>&1; then
                BOX=$PUBLIC_BOX
                return
            fi
            say "could not add $PUBLIC_BOX; using the local box"
        else
            say "$PUBLIC_BOX cannot be downloaded from here; using the local box"
        fi
    fi
    local key
    key=$("$REPO/vagrant/build-box.sh" key)
    BOX=bloom/bookworm-local-$key
    if have_box "$BOX"; then
        say "local box $BOX is cached"
        return
    fi
    say "building the local box $BOX (inputs changed or not built yet)"
    local file=$CACHE/bookworm-local-$key.box
    run 1200 "$REPO/vagrant/build-box.sh" build "$file" || die "could not build the box"
    run 300 vagrant box add --force --name "$BOX" "$file" > >(vagrant_log "$RUN/box.log") 2>&1 ||
        die "vagrant box add $file failed"
    rm -f "$file"
    local old
    for old in "$(box_dir bloom/bookworm-local)"-*; do
        [ -e "$old" ] && [ "$old" != "$(box_dir "$BOX")" ] && { say "removing the old box ${old##*/}"; rm -rf "$old"; }
    done
    return 0
}

# --------------------------------------------------------------------- diagnostics

# Output filters (process substitutions): they ignore Ctrl-C and SIGTERM and end with their
# input, so that the clean-up's messages still have somewhere to go.
# tee_log FILE: to the terminal and to FILE
tee_log() {
    trap '' INT TERM
    tee -a "$1"
}

# vagrant's output, without its progress bars, each line with the run's clock, also to file $1
vagrant_log() {
    trap '' INT TERM
    sed -u -E 's/\x1b\[K(Progress: [^\x1b]*)?//g; s/\r//g' |
        while IFS= read -r line; do printf '[%4ds] %s\n' $((SECONDS - T0)) "$line"; done | tee -a "$1"
}

show_console() {
    say "the end of the VM's serial console ($BLOOM_VAGRANT_SERIAL_LOG):"
    if [ -s "$BLOOM_VAGRANT_SERIAL_LOG" ]; then
        tail -n 60 "$BLOOM_VAGRANT_SERIAL_LOG" | sed -e 's/\x1b\[[0-9;]*[A-Za-z]//g' -e 's/\r$//' -e 's/^/  | /' >&2
    else
        echo "  (empty)" >&2
    fi
    local qlog=/var/log/libvirt/qemu/$DOMAIN.log
    if [ -s "$qlog" ]; then
        say "the end of $qlog:"
        tail -n 15 "$qlog" | sed 's/^/  | /' >&2
    fi
}

# in_vm COMMAND: run COMMAND in the VM on a connection of its own (not the shared one, which a
# killed test may have left wedged), with its errors shown and a time limit
in_vm() {
    timeout 60 ssh -F "$SSH_CONFIG" -o ControlMaster=no -o ControlPath=none -o LogLevel=ERROR \
        -o ConnectTimeout=20 -o BatchMode=yes default "$1" 2>&1 | sed 's/^/  | /' >&2 || true
}

show_journal() {
    [ -f "$SSH_CONFIG" ] || return 0
    say "the agent in the VM: bloomctl status, and its journal (journalctl -u bloom-agent):"
    in_vm "sudo timeout 20 bloomctl status; sudo journalctl -b --no-pager -o short-precise -n 150 -u bloom-agent -u bloom-agent.socket"
    say "the end of the whole journal in the VM (without sudo's lines):"
    in_vm "sudo journalctl -b --no-pager -o short-precise -n 400 | grep -v ' sudo\[' | tail -n 60"
}

# --------------------------------------------------------------------- main

finish() {
    local rc=$?
    exec 1>&7 2>&8  # a trap may run inside a redirected call (run ... > >(vagrant_log ...))
    # the clean-up runs to its end (a SIGKILL leaves it to the next run)
    trap 'say "signal ignored: cleaning up"' INT TERM
    cleaning=1
    [ -n "$child" ] && end_group "$child" "$child_start"
    if [ "${main_started:-}" = 1 ]; then
        phase destroy
        if [ "${BLOOM_VAGRANT_KEEP:-}" = 1 ]; then
            say "BLOOM_VAGRANT_KEEP=1: the VM stays; ssh -F $SSH_CONFIG default; remove it with: make vagrant-clean"
            exit $rc
        fi
        if [ -d "$VAGRANT_DOTFILE_PATH/machines" ]; then
            [ -f "$SSH_CONFIG" ] && { ssh -F "$SSH_CONFIG" -O exit default >/dev/null 2>&1 || true; }
            run 180 vagrant destroy -f >"$RUN/vagrant-destroy.log" 2>&1 ||
                { say "vagrant destroy failed:"; tail -n 5 "$RUN/vagrant-destroy.log" >&2; }
        fi
        clean_up
        phase ''
        say "timings:"
        printf '  %s\n' "${TIMINGS[@]}" >&2
        printf '  %-12s %4d s\n' total $((SECONDS - T0)) >&2
        printf '%s\n' "${TIMINGS[@]}" "total $((SECONDS - T0)) s" > "$RUN/timings"
    fi
    if [ $rc -eq 0 ]; then say "PASSED"; else say "FAILED (exit $rc); logs in $RUN"; fi
    exit $rc
}

interrupted() { say "interrupted (SIG$1)"; exit $((128 + $2)); }

lock() {
    [ "$(id -u)" = 0 ] || die "run as root"
    mkdir -p "$RUN" "$CACHE" /run/lock
    exec 9>"$LOCK"
    flock -n 9 || die "another vagrant/test.sh is running (lock $LOCK)"
}

main() {
    exec 7>&1 8>&2
    lock
    trap finish EXIT
    trap 'interrupted INT 2' INT
    trap 'interrupted TERM 15' TERM

    cd "$REPO"
    phase host
    install_host_packages
    main_started=1
    start_daemons
    clean_up keep   # what a killed run left behind
    find "$RUN" -mindepth 1 -maxdepth 1 ! -name child -exec rm -rf {} +

    DEB=${BLOOM_DEB:-$(ls -t "$REPO"/dist/bloom-agent_*_all.deb 2>/dev/null | head -n 1)}
    [ -n "$DEB" ] && [ -f "$DEB" ] || die "no package: build it with make deb (or set BLOOM_DEB)"
    BLOOM_DEB=$(readlink -f "$DEB")
    BLOOM_VAGRANT_DRIVER=$(driver)
    export BLOOM_DEB BLOOM_VAGRANT_DRIVER

    phase box
    choose_box
    export BLOOM_VAGRANT_BOX=$BOX
    say "box $BOX, libvirt driver $BLOOM_VAGRANT_DRIVER, package ${BLOOM_DEB##*/}"

    phase up
    create_pool
    rm -f "/var/log/libvirt/qemu/$DOMAIN.log"  # qemu's own log: this run's only
    if ! run 600 vagrant up --provider=libvirt > >(vagrant_log "$RUN/vagrant-up.log") 2>&1; then
        show_console
        die "vagrant up failed (log: $RUN/vagrant-up.log)"
    fi
    vagrant ssh-config > "$SSH_CONFIG.tmp" || die "vagrant ssh-config failed"
    # One ssh connection for the whole run (testinfra and the harness open one per command).
    printf '  ControlMaster auto\n  ControlPath /tmp/%s-%%C\n  ControlPersist 600s\n' "$NAME" >> "$SSH_CONFIG.tmp"
    mv "$SSH_CONFIG.tmp" "$SSH_CONFIG"

    phase tests
    local tests=${BLOOM_VAGRANT_TESTS:-$DEFAULT_TESTS} selection=()
    [ "$tests" = all ] || selection=(-k "$tests")
    # The default subset takes 4-5 minutes: a hung command (testinfra has no time limit)
    # ends the run after 10 rather than at CI's limit. Other choices get the run's deadline.
    local limit=600
    [ -z "${BLOOM_VAGRANT_TESTS:-}" ] || limit=$TIMEOUT
    # shellcheck disable=SC2086
    if ! run "$limit" /usr/bin/python3 -m pytest tests/integration -v -ra --durations=10 \
            --hosts ssh://default --ssh-config "$SSH_CONFIG" "${selection[@]}" ${PYTEST_ARGS:-} \
            > >(tee_log "$RUN/pytest.log") 2>&1; then
        show_journal
        die "tests failed in the VM (log: $RUN/pytest.log)"
    fi
}

case "${1:-run}" in
    run) main ;;
    box)
        lock
        install_host_packages
        BLOOM_VAGRANT_LOCAL_BOX=1 BLOOM_VAGRANT_BOX='' choose_box
        say "box $BOX is ready"
        ;;
    clean)
        lock
        if command -v virsh >/dev/null; then
            # a VM may outlive its libvirtd: a libvirtd of ours that died is started again
            # to end it
            if [ -f "$STATE/libvirtd" ] && ! daemon_pid libvirtd >/dev/null; then start_daemons; fi
            clean_up
        fi
        say "clean"
        ;;
    *) echo "usage: vagrant/test.sh [run|box|clean]" >&2; exit 2 ;;
esac
