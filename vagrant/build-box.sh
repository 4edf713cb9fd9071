#!/bin/bash
# The local Vagrant box for vagrant-libvirt: Debian bookworm built with mmdebstrap, booted
# directly with its kernel and initrd (no bootloader, no partition table: a whole-disk ext4),
# with every package the nspawn test machine has (tests/machine.py PACKAGES, so that
# `apt install ./bloom-agent_*.deb` and the tests work without a network) plus a kernel,
# DHCP and the vagrant user with Vagrant's insecure key and password-less sudo.
#
#   build-box.sh key            print the hash of everything the box is built from
#   build-box.sh build OUT.box  build the box file (about 2 minutes)
#   build-box.sh customize DIR  mmdebstrap's customize hook (internal)
#
# Runs as root on Debian 12 with mmdebstrap, e2fsprogs, qemu-utils and vagrant installed.
set -euo pipefail

SELF=$(readlink -f "$0")
REPO=$(dirname "$(dirname "$SELF")")
SUITE=bookworm
# Added to the test machine's packages: what a VM needs that a container does not.
BOX_PACKAGES="linux-image-amd64 systemd-sysv ifupdown isc-dhcp-client openssh-server sudo"
DISK_SIZE=8G
CMDLINE="root=/dev/vda rw console=ttyS0 net.ifnames=0"

say() { echo "[build-box] $*" >&2; }

harness() {  # tests/machine.py, the nspawn harness: one package list for both machines
    PYTHONPATH="$REPO/tests" /usr/bin/python3 -c "import machine; print(' '.join(machine.$1))"
}

packages() {
    # shellcheck disable=SC2046
    printf '%s\n' $(harness PACKAGES) $BOX_PACKAGES | sort -u | paste -sd, -
}

insecure_key() {
    local key
    for key in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
               /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
        [ -f "$key" ] && { echo "$key"; return; }
    done
    say "Vagrant's insecure public key (keys/vagrant.pub) not found: is vagrant installed?"
    exit 1
}

key() {
    { cat "$SELF"; echo "$SUITE"; packages; harness DISABLED_UNITS; cat "$(insecure_key)"; } |
        sha256sum | cut -c1-16
}

# Before any package is installed: a small initrd (the kernel package builds it once), with
# only what a virtio disk with ext4 needs, since the kernel unpacks it and udev runs in it
# under software emulation; and no drivers for emulated legacy hardware nobody uses here.
setup() {
    local root=$1 module
    mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks" "$root/etc/modprobe.d"
    echo MODULES=list > "$root/etc/initramfs-tools/conf.d/bloom-vagrant"
    printf '%s\n' '#!/bin/sh' \
        '# bloom-agent test box: the root file system is ext4 on a virtio disk.' \
        '[ "$1" = prereqs ] && exit 0' \
        '. /usr/share/initramfs-tools/hook-functions' \
        'for module in virtio_pci virtio_blk ext4 crc32c_generic; do force_load "$module"; done' \
        > "$root/etc/initramfs-tools/hooks/bloom-vagrant"
    chmod 755 "$root/etc/initramfs-tools/hooks/bloom-vagrant"
    {
        echo "# bloom-agent test box: emulated hardware nobody uses, and no nested KVM"
        for module in floppy ata_piix ata_generic pata_acpi uhci_hcd ehci_pci ehci_hcd i2c_piix4 \
                      pcspkr psmouse serio_raw joydev kvm kvm_amd kvm_intel powernow_k8; do
            echo "install $module /bin/true"
        done
    } > "$root/etc/modprobe.d/bloom-vagrant.conf"
}

customize() {
    local root=$1 unit
    chroot "$root" useradd --create-home --shell /bin/bash --groups sudo vagrant
    echo vagrant:vagrant | chroot "$root" chpasswd
    install -d -m 700 "$root/home/vagrant/.ssh"
    install -m 600 "$(insecure_key)" "$root/home/vagrant/.ssh/authorized_keys"
    chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
    echo "vagrant ALL=(ALL) NOPASSWD:ALL" > "$root/etc/sudoers.d/vagrant"
    chmod 440 "$root/etc/sudoers.d/vagrant"
    echo bloom-vagrant > "$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\tbloom-vagrant\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        > "$root/etc/hosts"
    printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' > "$root/etc/fstab"
    printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' \
        > "$root/etc/network/interfaces"
    printf 'UseDNS no\n' > "$root/etc/ssh/sshd_config.d/vagrant.conf"
    # Every VM gets its own machine id at first boot.
    : > "$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    # As in the nspawn machine: units that only slow a test machine down (postgresql is
    # installed for the tests that start it).
    for unit in $(harness DISABLED_UNITS); do
        rm -f "$root/etc/systemd/system/$unit"
    done
}

build() {
    local out=$1 work
    out=$(readlink -f "$out")
    work=$(mktemp -d "$(dirname "$out")/.build-box.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    local started=$SECONDS
    say "mmdebstrap $SUITE (about 90 s)"
    mmdebstrap --variant=apt --format=directory --include="$(packages)" \
        --dpkgopt=force-unsafe-io \
        --setup-hook="'$SELF' setup \"\$1\"" \
        --customize-hook="'$SELF' customize \"\$1\"" \
        "$SUITE" "$work/rootfs" > "$work/mmdebstrap.log" 2>&1 || {
            tail -n 40 "$work/mmdebstrap.log" >&2
            say "mmdebstrap failed"
            exit 1
        }
    say "root file system done after $((SECONDS - started)) s; making the disk image"
    mkdir "$work/box"
    cp "$work"/rootfs/boot/vmlinuz-* "$work/box/vmlinuz"
    cp "$work"/rootfs/boot/initrd.img-* "$work/box/initrd.img"
    truncate -s "$DISK_SIZE" "$work/root.raw"
    mkfs.ext4 -q -F -L rootfs -d "$work/rootfs" "$work/root.raw"
    rm -rf "$work/rootfs"
    # zstd: compresses (and is read) several times faster than qcow2's default zlib
    qemu-img convert -c -O qcow2 -o compression_type=zstd "$work/root.raw" "$work/box/box.img"
    rm -f "$work/root.raw"
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "${DISK_SIZE%G}" \
        > "$work/box/metadata.json"
    cat > "$work/box/Vagrantfile" <<EOF
# Built by bloom-agent's vagrant/build-box.sh: direct kernel boot, the kernel and initrd are in the box.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    lv.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    lv.cmd_line = "$CMDLINE"
  end
end
EOF
    tar -C "$work/box" -cf "$work/out.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
    mv "$work/out.box" "$out"
    say "built $out ($(du -m "$out" | cut -f1) MB) in $((SECONDS - started)) s"
}

case "${1:-}" in
    key) key ;;
    build) build "${2:?usage: build-box.sh build OUT.box}" ;;
    setup) setup "${2:?}" ;;
    customize) customize "${2:?}" ;;
    *) echo "usage: build-box.sh key | build OUT.box" >&2; exit 2 ;;
esac
