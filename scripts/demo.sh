#!/usr/bin/env bash
# The main job, end to end, on real images this script makes itself:
#
# 1. builds a family of five bootable Debian VMIs sharing a base OS
#    (scripts/vmi-family.sh, debootstrap from the package registry);
# 2. boots each under QEMU (TCG) to its boot-complete marker, recording the
#    reads of its backing file, and captures a boot image from them;
# 3. imports every boot image into a real store and shows what dedup saves;
# 4. proves the store: verify, export equals what was imported byte for
#    byte, extract equals the VMI at every recorded block; rm + gc keep the
#    others whole.
#
# Needs root. Work files go to $DEMO_DIR (default /var/tmp/yolo-demo); the
# family and its traces are kept in $FAMILY_DIR (default /var/tmp/yolo-family)
# and reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh debootstrap qemu-system-x86 qemu-utils strace e2fsprogs python3
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
family="${FAMILY_DIR:-/var/tmp/yolo-family}"
work="${DEMO_DIR:-/var/tmp/yolo-demo}"
store="$work/store"

echo "== 1. the VMI family ($family)"
scripts/vmi-family.sh "$family"
vmis=()
for f in "$family"/*.qcow2; do vmis+=("$(basename "$f" .qcow2)"); done

echo "== 2. boot each VMI once, recording its reads"
mkdir -p "$work"
for v in "${vmis[@]}"; do
    if [ ! -s "$family/$v.trace" ]; then
        secs=$(scripts/boot-vm.sh "$family/$v.qcow2" --strace "$family/$v.trace.tmp")
        mv "$family/$v.trace.tmp" "$family/$v.trace"
        echo "$v booted in ${secs}s (TCG, under strace)"
    fi
    "$bin" capture --trace "$family/$v.trace" "$family/$v.qcow2" -o "$work/$v.yolo"
done

echo "== 3. import into a fresh store ($store)"
rm -rf "$store"
"$bin" --store "$store" import "$work"/*.yolo
"$bin" --store "$store" ls
"$bin" --store "$store" stats

echo "== 4. prove it"
"$bin" --store "$store" verify
for v in "${vmis[@]}"; do
    "$bin" --store "$store" export "$v.qcow2" -o "$work/$v.out.yolo" >/dev/null
    cmp "$work/$v.yolo" "$work/$v.out.yolo"
done
echo "export: every boot image byte-identical to the one imported"
v="${vmis[0]}"
"$bin" --store "$store" extract "$v.qcow2" -o "$work/$v.sparse" >/dev/null
python3 - "$family/$v.trace" "$family/$v.qcow2" "$work/$v.sparse" <<'PY'
import sys
trace, vmi, sparse = sys.argv[1:]
blocks = set()
for line in open(trace):
    line = line.split("#")[0].split()
    if line:
        off, n = int(line[0]), int(line[1])
        blocks.update(range(off // 4096, (off + n - 1) // 4096 + 1))
with open(vmi, "rb") as a, open(sparse, "rb") as b:
    for blk in blocks:
        a.seek(blk * 4096); b.seek(blk * 4096)
        assert a.read(4096) == b.read(4096), f"block {blk} differs"
print(f"extract: {len(blocks)} recorded blocks equal the VMI")
PY
"$bin" --store "$store" import "$work/${vmis[0]}.yolo" | sed 's/^/re-import: /'
"$bin" --store "$store" rm "${vmis[1]}.qcow2"
"$bin" --store "$store" gc
"$bin" --store "$store" verify
for v in "${vmis[@]:2}"; do
    "$bin" --store "$store" export "$v.qcow2" -o "$work/$v.out.yolo" >/dev/null
    cmp "$work/$v.yolo" "$work/$v.out.yolo"
done
echo "rm + gc: the other boot images are intact. Demo complete."
