#!/usr/bin/env bash
# The paper's real-boot experiments (Figures 11 and 12) on the emulated HDD
# (scripts/slow-disk.sh hdd: 150 IOPS, 150 MB/s): QEMU (TCG) boots to the
# boot-complete marker, fresh qcow2 overlays, the VMIs on the throttled
# disk, the store on the fast disk, QEMU and the mount's server in the
# throttled group. Each run cold (page cache dropped; a fresh mount per
# yolo run, its VMIs' recorded blocks checked before it joins the group).
#
#   contention  one VM (base.qcow2) beside K = 0..4 random 4 KiB O_DIRECT
#               readers of the same disk (Figure 12);
#   many        N = 1, 2, 4 distinct VMIs at once (Figure 11).
#
#   benches/hdd-boots.sh      (after scripts/demo.sh: its family and boot images)
#
# Env: KS (default "0 1 2 4"), NS (default "1 2 4"). Writes
# /var/tmp/yolo-hdd-boots/boots.csv: scenario,x,policy,seconds,device_reads.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
family="${FAMILY_DIR:-/var/tmp/yolo-family}"
export KERNEL_DIR="$family"
images="${DEMO_DIR:-/var/tmp/yolo-demo}/boot-images"
work=/var/tmp/yolo-hdd-boots
disk=$work/disk
mnt=$work/mnt
cleanup() {
    umount "$mnt" 2>/dev/null || true
    scripts/slow-disk.sh down "$disk" > /dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup; rm -rf "$work"; mkdir -p "$mnt"
"$bin" --store "$work/store" import "$images"/*.yolo > /dev/null
vmis=(base.qcow2 dev.qcow2 py.qcow2 web.qcow2)
SIZE=8G scripts/slow-disk.sh up hdd "$disk" > /dev/null
for v in "${vmis[@]}"; do cp "$family/$v" "$disk/$v"; done
sync
readers=()
start_readers() { # K
    for ((i = 0; i < $1; i++)); do
        scripts/slow-disk.sh run "$disk" -- python3 - "$disk/${vmis[$((i % ${#vmis[@]}))]}" "$i" <<'PY' &
import mmap, os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
size = os.fstat(fd).st_size // 4096
buf = mmap.mmap(-1, 4096)
rng = random.Random(int(sys.argv[2]))
while True:
    os.preadv(fd, [buf], rng.randrange(size) * 4096)
PY
        readers+=($!)
    done
}
stop_readers() { for p in "${readers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; readers=(); }
reads_now() { scripts/slow-disk.sh stats "$disk" | sed 's/ .*//; s/reads=//'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
status() { python3 -c "import json,sys; d=json.load(open('$mnt/.yolo-status')); print(eval(sys.argv[1]))" "$1"; }
mount_yolo() {
    "$bin" --store "$work/store" mount --images "$disk" "$mnt" 2>> "$work/mount.log" &
    local pid=$!
    for _ in $(seq 300); do [ -e "$mnt/.yolo-status" ] && break; sleep 0.1; done
    until [ "$(status "d['startup_verification_done']")" = True ]; do sleep 0.2; done
    scripts/slow-disk.sh join "$disk" "$pid" "$(status "d['server_pid']")"
}
boot_all() { # DIR VMI...: boots them at once, prints the seconds until all are up
    local dir=$1 pids=() start end; shift
    start=$(date +%s.%N)
    for v in "$@"; do
        scripts/slow-disk.sh run "$disk" -- scripts/boot-vm.sh "$dir/$v" > /dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')"
}
csv=$work/boots.csv
echo "scenario,x,policy,seconds,device_reads" > "$csv"
run() { # SCENARIO X K VMI...
    local scenario=$1 x=$2 k=$3; shift 3
    for policy in normal yolo; do
        local dir=$disk
        if [ $policy = yolo ]; then mount_yolo; dir=$mnt; fi
        drop; local r0; r0=$(reads_now); start_readers "$k"
        local secs; secs=$(boot_all "$dir" "$@")
        stop_readers; local r1; r1=$(reads_now)
        [ $policy = yolo ] && umount "$mnt"
        echo "$scenario,$x,$policy,$secs,$((r1 - r0))" | tee -a "$csv"
    done
}
for k in ${KS:-0 1 2 4}; do run contention "$k" "$k" base.qcow2; done
for n in ${NS:-1 2 4}; do run many "$n" 0 "${vmis[@]:0:$n}"; done
python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
t = {(r["scenario"], r["x"], r["policy"]): float(r["seconds"]) for r in rows}
for (s, x, p), v in sorted(t.items()):
    if p == "normal" and (s, x, "yolo") in t:
        print(f"{s} {x}: normal {v:.1f} s, yolo {t[(s, x, 'yolo')]:.1f} s, {v / t[(s, x, 'yolo')]:.2f}x")
PY
