#!/usr/bin/env bash
# Builds a family of real, bootable Debian 12 VMIs that share a base OS:
#
#   scripts/vmi-family.sh [OUTDIR]     (default /var/tmp/yolo-family)
#
# OUTDIR/base.qcow2 has a kernel, systemd and ssh; each variant adds other
# packages to a copy of the same tree. Every image boots with QEMU's direct
# kernel boot (OUTDIR/vmlinuz, OUTDIR/initrd.img, root=/dev/vda) and, once
# ssh is up, a unit prints YOLO-BOOT-COMPLETE on the serial console and
# powers the VM off: the boot-complete marker. Needs root (debootstrap,
# chroot). Images already built are kept; delete OUTDIR to rebuild.
set -euo pipefail
out="${1:-/var/tmp/yolo-family}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
size="${IMAGE_SIZE:-2G}"
# name:packages (space separated after the colon, none for the base).
variants=(
    "base:"
    "web:nginx-light"
    "cache:redis-server"
    "py:python3 python3-requests"
    "dev:git make"
)
"$(dirname "$0")/setup.sh" debootstrap qemu-utils e2fsprogs
mkdir -p "$out"
cd "$out"

tree=debootstrap-tree
if [ ! -f "$tree/.complete" ]; then
    rm -rf "$tree"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,udev,openssh-server,linux-image-amd64,initramfs-tools,ifupdown,iproute2 \
        bookworm "$tree" "$mirror"
    echo yolo-vm > "$tree/etc/hostname"
    echo "/dev/vda / ext4 defaults 0 1" > "$tree/etc/fstab"
    chroot "$tree" passwd -d root >/dev/null
    cat > "$tree/etc/systemd/system/yolo-boot-done.service" <<'UNIT'
[Unit]
Description=Print the boot-complete marker and power off
After=ssh.service multi-user.target
Wants=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo YOLO-BOOT-COMPLETE > /dev/ttyS0; systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
UNIT
    chroot "$tree" systemctl enable yolo-boot-done.service >/dev/null 2>&1
    # No services start inside the build chroot.
    printf '#!/bin/sh\nexit 101\n' > "$tree/usr/sbin/policy-rc.d"; chmod +x "$tree/usr/sbin/policy-rc.d"
    touch "$tree/.complete"
fi
cp -L "$tree/vmlinuz" vmlinuz
cp -L "$tree/initrd.img" initrd.img

for v in "${variants[@]}"; do
    name="${v%%:*}"; pkgs="${v#*:}"
    [ -f "$name.qcow2" ] && continue
    vt="$name.tree"
    rm -rf "$vt"
    cp -a "$tree" "$vt"
    if [ -n "$pkgs" ]; then
        mount -t proc proc "$vt/proc"
        cp /etc/resolv.conf "$vt/etc/resolv.conf"
        chroot "$vt" apt-get update -q >/dev/null
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive chroot "$vt" apt-get install -y -q --no-install-recommends $pkgs >/dev/null
        umount "$vt/proc"
    fi
    chroot "$vt" apt-get clean
    rm -f "$vt/usr/sbin/policy-rc.d" "$vt/.complete"
    rm -rf "$vt/var/lib/apt/lists/"*
    truncate -s "$size" "$name.raw"
    mkfs.ext4 -q -F -L root -d "$vt" "$name.raw"
    qemu-img convert -f raw -O qcow2 "$name.raw" "$name.qcow2"
    rm -f "$name.raw"
    rm -rf "$vt"
    echo "built $out/$name.qcow2 ($(du -h "$name.qcow2" | cut -f1))"
done
