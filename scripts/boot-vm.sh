#!/usr/bin/env bash
# Boots one VM of the family under QEMU (TCG) until its boot-complete marker:
#
#   scripts/boot-vm.sh BACKING.qcow2 [--strace TRACE_OUT]
#
# The VM gets a fresh qcow2 overlay whose backing file is BACKING (which may
# sit on a yolo-store mount), so it never writes to BACKING. Kernel and initrd
# come from BACKING's directory (direct kernel boot). Prints the boot time in
# seconds; fails if the marker does not appear within BOOT_TIMEOUT (600 s).
# With --strace, records the reads QEMU makes of BACKING as a trace that
# `yolo-store capture` takes.
set -euo pipefail
backing=$(realpath "$1"); shift
trace_out=""
[ "${1:-}" = "--strace" ] && trace_out="$2"
dir=$(dirname "$backing")
kernel="${KERNEL_DIR:-$dir}"
tmp=$(mktemp -d /var/tmp/yolo-boot.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
qemu-img create -q -f qcow2 -F qcow2 -b "$backing" "$tmp/overlay.qcow2"
cmd=(qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 1024 -smp 1
    -nographic -no-reboot -nic none
    -kernel "$kernel/vmlinuz" -initrd "$kernel/initrd.img"
    -append "root=/dev/vda ro console=ttyS0 quiet fsck.mode=skip"
    -drive "file=$tmp/overlay.qcow2,if=virtio,format=qcow2")
if [ -n "$trace_out" ]; then
    cmd=(strace -f -y -s 0 -e trace=pread64,preadv,preadv2 -o "$tmp/strace.log" "${cmd[@]}")
fi
start=$(date +%s.%N)
timeout "${BOOT_TIMEOUT:-600}" "${cmd[@]}" < /dev/null > "$tmp/serial.log" 2>&1 || true
end=$(date +%s.%N)
if ! grep -q YOLO-BOOT-COMPLETE "$tmp/serial.log"; then
    echo "boot of $backing did not complete; serial console:" >&2
    tail -30 "$tmp/serial.log" >&2
    exit 1
fi
if [ -n "$trace_out" ]; then
    "$(dirname "$0")/strace-to-trace.py" "$tmp/strace.log" "$backing" > "$trace_out"
fi
python3 -c "print(f'{$end - $start:.1f}')"
