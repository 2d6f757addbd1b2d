#!/usr/bin/env bash
# The paper's Table II on an emulated slow disk: a sequential read of a
# whole VMI (1 MiB reads) and random 4 KiB reads of it, directly (ext4 on
# the throttled device) and through a yolo-store mount serving the VMI with
# its boot image (a VM booted by YOLO reading its backing file). Cold each
# time: drop_caches, and a fresh mount whose daemon is in the disk's
# throttled group like the reader. Prints seconds, best of ROUNDS, and the
# ratio mount / direct (the paper: at worst 1.10).
#
#   benches/table2.sh [FAMILY_DIR] [RECORD_DIR]
#
# Defaults as benches/paper-io.sh. Env: PROFILES (default "hdd ssd"), VMI
# (default web.qcow2), RANDOM_IOS (default 2000 reads), ROUNDS (default 3).
# Needs root and fio.
set -euo pipefail
cd "$(dirname "$0")/.."
family=$(realpath "${1:-/var/tmp/yolo-family}")
rec=$(realpath "${2:-/var/tmp/yolo-demo/boot-images}")
profiles=${PROFILES:-hdd ssd}
vmi=${VMI:-web.qcow2}
ios=${RANDOM_IOS:-2000}
rounds=${ROUNDS:-3}
command -v fio >/dev/null || apt-get install -y -q --no-install-recommends fio >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
# YOLO_STORE_BIN: a binary built before (a shared target directory may hold
# another branch's build by the time this runs).
bin=${YOLO_STORE_BIN:-$CARGO_TARGET_DIR/release/yolo-store}
[ -n "${YOLO_STORE_BIN:-}" ] || cargo build --release -q
work=$(mktemp -d /var/tmp/yolo-table2.XXXXXX)
disk=$work/disk mnt=$work/mnt
mkdir -p "$mnt"
mount_pid=""
cleanup() {
    umount "$mnt" 2>/dev/null || true
    [ -n "$mount_pid" ] && wait "$mount_pid" 2>/dev/null || true
    scripts/slow-disk.sh down "$disk" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"$bin" --store "$work/store" import "$rec/$vmi.yolo" >/dev/null

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
status() { python3 -c "import json,sys; d=json.load(open('$mnt/.yolo-status')); print(eval(sys.argv[1]))" "$1"; }
mount_yolo() { # as in benches/paper-io.sh: hashed outside the group, then joined
    "$bin" --store "$work/store" mount --images "$disk" "$mnt" 2>>"$work/mount.log" &
    mount_pid=$!
    for _ in $(seq 300); do [ -e "$mnt/.yolo-status" ] && break; sleep 0.1; done
    until [ "$(status "d['startup_verification_done']")" = True ]; do sleep 0.2; done
    # The supervisor and the server process that reads the VMIs.
    scripts/slow-disk.sh join "$disk" "$mount_pid" "$(status "d['server_pid']")"
}
unmount_yolo() { umount "$mnt"; wait "$mount_pid" || true; mount_pid=""; }
throttled() { scripts/slow-disk.sh run "$disk" -- "$@"; }
seq_read() { throttled python3 -c "
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY); t = time.perf_counter()
while os.read(fd, 1 << 20): pass
print(f'{time.perf_counter() - t:.3f}')" "$1"; }
rand_read() {
    throttled fio --name=rand --filename="$1" --rw=randread --bs=4k --ioengine=psync \
        --number_ios="$ios" --randrepeat=1 --output-format=json 2>/dev/null |
        python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(f\"{j['job_runtime']/1000:.3f}\")"
}
one() { # KIND(seq|rand) WHERE(direct|mount)
    local dir=$disk t
    drop
    [ "$2" = mount ] && mount_yolo && dir=$mnt
    drop
    if [ "$1" = seq ]; then t=$(seq_read "$dir/$vmi"); else t=$(rand_read "$dir/$vmi"); fi
    [ "$2" = mount ] && unmount_yolo
    echo "$t"
}
best() { sort -n | head -1; }

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); VMI $vmi, $(($(stat -c %s "$family/$vmi") >> 20)) MiB"
printf '%-6s %-10s %10s %10s %8s\n' profile read direct mount ratio
for profile in $profiles; do
    SIZE=4G scripts/slow-disk.sh up "$profile" "$disk" >/dev/null
    cp "$family/$vmi" "$disk/$vmi"; sync
    for kind in seq rand; do
        d=$(for _ in $(seq "$rounds"); do one "$kind" direct; done | best)
        m=$(for _ in $(seq "$rounds"); do one "$kind" mount; done | best)
        printf '%-6s %-10s %10s %10s %7sx   (load %s)\n' "$profile" "$kind" "$d" "$m" \
            "$(python3 -c "print(f'{$m / $d:.2f}')")" "$(cut -d' ' -f1 /proc/loadavg)"
    done
    scripts/slow-disk.sh down "$disk" >/dev/null
done
