#!/usr/bin/env bash
# `mount --learn` on the demo's family: each VMI of LEARN_VMIS (default
# "dev.qcow2 web.qcow2") boots twice (TCG) through a --learn mount of an
# empty store, with no command typed in between. Prints per VMI:
#   - the learned boot image's blocks against those of the boot image
#     `record` made for the same VMI (the demo's, $DEMO_DIR/boot-images):
#     how many of record's blocks the learned one has (goal >= 95%);
#   - the second boot's bytes from the store against its boot image's size
#     (goal >= 90%), and both boot times.
# Needs a finished scripts/demo.sh run (the family and its boot images).
# Writes $OUT (default /var/tmp/yolo-learn/learn.csv).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
family="${FAMILY_DIR:-/var/tmp/yolo-family}"
recorded="${DEMO_DIR:-/var/tmp/yolo-demo}/boot-images"
work=/var/tmp/yolo-learn
out="${OUT:-$work/learn.csv}"
export KERNEL_DIR="$family"
umount "$work/mnt" 2>/dev/null || true
rm -rf "$work"; mkdir -p "$work/mnt"
"$bin" --store "$work/store" init > /dev/null
"$bin" --store "$work/store" mount --learn --images "$family" "$work/mnt" 2> "$work/mount.log" &
trap 'umount "$work/mnt" 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -e "$work/mnt/.yolo-status" ] && break; sleep 0.1; done
status() { python3 -c "import json,sys; s=json.load(open('$work/mnt/.yolo-status')); print(eval(sys.argv[1]))" "$1"; }
echo "vmi,record_blocks,learned_blocks,common_blocks,coverage,boot1_s,boot2_s,boot2_from_store_bytes,boot_image_bytes,from_store_share" > "$out"
for v in ${LEARN_VMIS:-dev.qcow2 web.qcow2}; do
    n0=$(status "s['learning']['imported']")
    t1=$(scripts/boot-vm.sh "$work/mnt/$v")
    until [ "$(status "s['learning']['imported']")" -gt "$n0" ]; do sleep 1; done
    until [ "$(status "s['identities_pending']")" = 0 ]; do sleep 0.2; done
    b0=$(status "s['bytes_from_store']")
    t2=$(scripts/boot-vm.sh "$work/mnt/$v")
    b1=$(status "s['bytes_from_store']")
    "$bin" --store "$work/store" export "$v" -o "$work/$v.learned.yolo" > /dev/null
    python3 - "$recorded/$v.yolo" "$work/$v.learned.yolo" "$v" "$t1" "$t2" "$((b1 - b0))" >> "$out" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("yolo_blocks", "scripts/yolo-blocks.py")
yolo_blocks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(yolo_blocks)
def blocks(path):
    """Block ids of a .yolo (all files), and its block data's bytes."""
    ids, total = set(), 0
    for _bs, _name, _size, file_ids, file_blocks in yolo_blocks.files(path):
        ids |= set(file_ids)
        total += sum(len(b) for b in file_blocks)
    return ids, total
rec, _ = blocks(sys.argv[1])
learned, learned_bytes = blocks(sys.argv[2])
v, t1, t2, served = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
common = len(rec & learned)
print(f"{v},{len(rec)},{len(learned)},{common},{common / len(rec):.4f},{t1},{t2},{served},{learned_bytes},{served / learned_bytes:.4f}")
PY
    tail -1 "$out"
done
grep -h "learning:" "$work/mount.log" || true
