#!/usr/bin/env bash
# The cold path on this machine's (fast, host-cached) disk: a boot's reads
# replayed (benches/replay.py) against the VMI directly and through a fresh
# mount, alternating, ROUNDS times, with the medians and their ratio.
# "Cold" evicts only the files involved (posix_fadvise DONTNEED on the VMI
# and the store), so other work on the machine keeps its page cache.
#
#   benches/cold-replay.sh [open|all]
#
# open: the mount's default, each boot image loaded into the cache on its
# file's first open, racing the replay as it would race a VM. all:
# `mount --preload all`, the paper's setting (boot images in YOLO's memory
# before the VMs start); the replay starts once the preload is done.
# Env: VMIS (default "base web"), ROUNDS (default 8), FAMILY_DIR, DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-open}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
family="${FAMILY_DIR:-/var/tmp/yolo-family}"
images="${DEMO_DIR:-/var/tmp/yolo-demo}/boot-images"
work=$(mktemp -d /var/tmp/yolo-cold.XXXXXX)
mnt=$work/mnt; mkdir -p "$mnt"
cleanup() { umount "$mnt" 2>/dev/null || true; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
"$bin" --store "$work/store" import "$images"/*.yolo > /dev/null
evict() {
    python3 - "$@" <<'PY'
import os, sys
for root in sys.argv[1:]:
    paths = [root] if os.path.isfile(root) else [
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}
status() { python3 -c "import json,sys; d=json.load(open('$mnt/.yolo-status')); print(eval(sys.argv[1]))" "$1" 2>/dev/null; }
replay() { benches/replay.py "$1" "$2" | cut -d' ' -f1; }
preload=open; [ "$mode" = all ] && preload=all
echo "round vmi direct yolo (seconds; --preload $preload)"
for round in $(seq "${ROUNDS:-8}"); do
    for v in ${VMIS:-base web}; do
        trace="$images/$v.qcow2.trace"
        evict "$family/$v.qcow2"
        direct=$(replay "$family/$v.qcow2" "$trace")
        "$bin" --store "$work/store" mount --preload "$preload" --images "$family" "$mnt" 2>> "$work/mount.log" &
        until [ "$(status "d['startup_verification_done']")" = True ]; do sleep 0.1; done
        if [ "$mode" = all ]; then
            until [ "$(status "d['preload_chunks_total'] > 0 and d['preload_chunks_done'] >= d['preload_chunks_total']")" = True ]; do sleep 0.1; done
        fi
        evict "$family/$v.qcow2" "$work/store"
        yolo=$(replay "$mnt/$v.qcow2" "$trace")
        umount "$mnt"; wait
        echo "$round $v $direct $yolo"
    done
done | tee "$work/runs"
python3 - "$work/runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l[0].isdigit()]
for v in sorted({r[1] for r in rows}):
    d = statistics.median(float(r[2]) for r in rows if r[1] == v)
    y = statistics.median(float(r[3]) for r in rows if r[1] == v)
    print(f"{v}: direct {d:.3f} s, yolo {y:.3f} s (medians): yolo/direct {y / d:.2f}x")
PY
