#!/usr/bin/env bash
# Boots one VMI of the family as a libvirt domain (TCG) until its
# boot-complete marker, the way most operators start VMs:
#
#   scripts/libvirt-boot.sh BACKING.qcow2
#
# The domain (docs/libvirt-domain.xml) gets a fresh qcow2 overlay whose
# backing file is BACKING, which may sit on a yolo-store mount (mounted with
# --allow-other: QEMU runs as libvirt-qemu). Kernel and initrd come from
# KERNEL_DIR (default: BACKING's directory). Starts virtlogd and libvirtd
# without systemd if no libvirtd answers. Prints the boot time in seconds;
# fails if the marker does not appear within BOOT_TIMEOUT (600 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
backing=$(realpath "$1")
kernel="${KERNEL_DIR:-$(dirname "$backing")}"
virsh=(virsh -q -c qemu:///system)

if ! "${virsh[@]}" version > /dev/null 2>&1; then
    mkdir -p /var/log/libvirt /var/run/libvirt
    pgrep -x virtlogd > /dev/null || virtlogd -d
    libvirtd -d
    for _ in $(seq 100); do "${virsh[@]}" version > /dev/null 2>&1 && break; sleep 0.1; done
    "${virsh[@]}" version > /dev/null || { echo "libvirtd did not come up" >&2; exit 1; }
fi

# libvirt-qemu must reach the overlay and the console log.
tmp=$(mktemp -d /var/tmp/yolo-libvirt.XXXXXX)
chmod 755 "$tmp"
name="yolo-$(basename "$tmp")"
trap '"${virsh[@]}" destroy "$name" > /dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
qemu-img create -q -f qcow2 -F qcow2 -b "$backing" "$tmp/overlay.qcow2"
sed -e "s|@NAME@|$name|; s|@KERNEL@|$kernel/vmlinuz|; s|@INITRD@|$kernel/initrd.img|" \
    -e "s|@OVERLAY@|$tmp/overlay.qcow2|; s|@BACKING@|$backing|; s|@SERIAL@|$tmp/serial.log|" \
    "$root/docs/libvirt-domain.xml" > "$tmp/domain.xml"
start=$(date +%s.%N)
"${virsh[@]}" create "$tmp/domain.xml" > /dev/null
deadline=$((SECONDS + ${BOOT_TIMEOUT:-600}))
until grep -q YOLO-BOOT-COMPLETE "$tmp/serial.log" 2> /dev/null; do
    if [ $SECONDS -ge $deadline ] || ! "${virsh[@]}" domstate "$name" > /dev/null 2>&1; then
        echo "libvirt boot of $backing did not complete; serial console:" >&2
        tail -30 "$tmp/serial.log" >&2 || true
        exit 1
    fi
    sleep 0.2
done
end=$(date +%s.%N)
python3 -c "print(f'{$end - $start:.1f}')"
