#!/usr/bin/env bash
# The main job, end to end, on real images this script makes itself (the
# paper's workflow):
#
# 1. builds a family of five bootable Debian VMIs sharing a base OS
#    (scripts/vmi-family.sh, debootstrap from the package registry);
# 2. boots each under QEMU (TCG) to its boot-complete marker with its
#    backing file on a `yolo-store record` mount, which writes its boot image
#    on unmount;
# 3. imports every boot image into a real store and shows what dedup saves;
# 4. puts the VMIs on an emulated HDD (scripts/slow-disk.sh) shared with
#    random readers and boots two at once, normally, then through a mount
#    of the store (fresh qcow2
#    overlays whose backing files are on the disk or the mount), and prints
#    both times and the ratio; every boot must reach its marker, and the
#    mount's counters show the boot reads came from the store;
#    Then one VMI boots as a libvirt domain through the same mount
#    (scripts/libvirt-boot.sh, docs/libvirt-domain.xml);
# 5. proves the store: verify, export equals what was imported byte for
#    byte, rm + gc while mounted keep the others whole.
#
# Needs root. Work files go to $DEMO_DIR (default /var/tmp/yolo-demo); the
# family is kept in $FAMILY_DIR (default /var/tmp/yolo-family) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh debootstrap qemu-system-x86 qemu-utils e2fsprogs python3 libvirt-daemon-system
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
family="${FAMILY_DIR:-/var/tmp/yolo-family}"
work="${DEMO_DIR:-/var/tmp/yolo-demo}"
store="$work/store"
mnt="$work/mnt"
disk="$work/disk"
export KERNEL_DIR="$family"

cleanup() {
    umount "$mnt" 2>/dev/null || true
    scripts/slow-disk.sh down "$disk" > /dev/null 2>&1 || true
}
trap cleanup EXIT
wait_mounted() { for _ in $(seq 300); do [ -e "$1/.yolo-status" ] && return; sleep 0.1; done; exit 1; }
# A serving mount hashes its VMIs in the background before it uses their
# boot images (a changed VMI is never served from a stale boot image).
wait_verified() {
    until python3 -c "import json,sys; sys.exit(not json.load(open('$1/.yolo-status'))['startup_verification_done'])"; do
        sleep 0.2
    done
}

echo "== 1. the VMI family ($family)"
scripts/vmi-family.sh "$family"
vmis=()
for f in "$family"/*.qcow2; do vmis+=("$(basename "$f")"); done
cleanup; rm -rf "$work"; mkdir -p "$work/boot-images" "$mnt"

echo "== 2. boot each VMI once on a record mount"
for v in "${vmis[@]}"; do
    "$bin" record --images "$family" "$mnt" -o "$work/boot-images" > /dev/null 2> "$work/record.log" &
    pid=$!
    wait_mounted "$mnt"
    secs=$(scripts/boot-vm.sh "$mnt/$v")
    umount "$mnt"; wait "$pid"
    echo "$v: booted in ${secs}s (TCG, recording); $(grep "$v" "$work/record.log" | sed 's/^yolo-store: //')"
done

echo "== 3. import into a fresh store ($store)"
"$bin" --store "$store" import "$work/boot-images"/*.yolo
"$bin" --store "$store" ls
"$bin" --store "$store" stats

echo "== 4. boot the family on an emulated HDD, normally and through the yolo mount"
# The VMIs go on a throttled disk (150 IOPS, 150 MB/s: the paper's HDD,
# scripts/slow-disk.sh); the store stays on the fast disk. QEMU and the
# daemon run in the disk's throttled group. $DEMO_VMS VMs (default 2, one
# per core: with more, TCG's emulated CPU is the bottleneck and hides any
# I/O saving) boot at once, each way, while $DEMO_READERS (default 4) random
# readers use the same disk as other tenants would (the paper's Figure 12).
SIZE=8G scripts/slow-disk.sh up hdd "$disk"
for v in "${vmis[@]}"; do cp "$family/$v" "$disk/$v"; done
sync
contention=()
start_readers() {
    for ((i = 0; i < ${DEMO_READERS:-4}; i++)); do
        scripts/slow-disk.sh run "$disk" -- python3 - "$disk/${vmis[$((i % ${#vmis[@]}))]}" <<'PY' &
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
size = os.fstat(fd).st_size // 4096
buf = __import__("mmap").mmap(-1, 4096)
rng = random.Random(1)
while True:
    os.preadv(fd, [buf], rng.randrange(size) * 4096)
PY
        contention+=($!)
    done
}
stop_readers() { for p in "${contention[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; contention=(); }
wave=("${vmis[@]:0:${DEMO_VMS:-2}}")
boot_wave() { # DIR: boots the wave's VMIs at once from DIR; prints the seconds until all are up
    local pids=() start end
    start=$(date +%s.%N)
    for v in "${wave[@]}"; do
        scripts/slow-disk.sh run "$disk" -- scripts/boot-vm.sh "$1/$v" > "$work/boot.$v" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')"
}
reads_now() { scripts/slow-disk.sh stats "$disk" | sed 's/ .*//; s/reads=//'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

drop; r0=$(reads_now); start_readers
normal=$(boot_wave "$disk")
stop_readers; r1=$(reads_now)
echo "normal: ${wave[*]} booted in ${normal}s (each: $(cat "${wave[@]/#/$work/boot.}" | tr '\n' ' ')s); $((r1 - r0)) device reads"
"$bin" --store "$store" mount --allow-other --images "$disk" "$mnt" 2> "$work/mount.log" &
pid=$!
wait_mounted "$mnt"
wait_verified "$mnt"
# The supervisor (whose restarted servers start in its group) and the
# server that reads the VMIs.
scripts/slow-disk.sh join "$disk" "$pid" "$(python3 -c "import json; print(json.load(open('$mnt/.yolo-status'))['server_pid'])")"
drop; r0=$(reads_now); start_readers
yolo=$(boot_wave "$mnt")
stop_readers; r1=$(reads_now)
echo "yolo:   ${wave[*]} booted in ${yolo}s (each: $(cat "${wave[@]/#/$work/boot.}" | tr '\n' ' ')s); $((r1 - r0)) device reads"
python3 -c "print(f'speed-up of the yolo mount on the emulated HDD: {$normal / $yolo:.2f}x (TCG: a boot is mostly emulated CPU; docs/benchmarks.md)')"
"$bin" status "$mnt" > "$work/status.json"
python3 - "$work/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c = s["cache"]
print(f"mount: {s['reads']} reads, {s['bytes_from_store'] >> 20} MiB from the store, "
      f"{s['bytes_from_file'] >> 20} MiB from files, cache {c['hits']} hits / {c['misses']} misses, "
      f"{s['chunk_failures']} chunk failures")
assert s["bytes_from_store"] > 0, "no boot read came from the store"
assert s["chunk_failures"] == 0 and s["identity_mismatches"] == 0 and s["unverified_opens"] == 0
PY

echo "== 4b. a libvirt domain on the mount"
# As most operators start VMs: libvirtd (started here without systemd),
# docs/libvirt-domain.xml, QEMU as libvirt-qemu (hence --allow-other).
store_bytes() { python3 -c "import json; print(json.load(open('$mnt/.yolo-status'))['bytes_from_store'])"; }
v=${vmis[$((${#vmis[@]} - 1))]}
b0=$(store_bytes)
secs=$(scripts/libvirt-boot.sh "$mnt/$v")
b1=$(store_bytes)
echo "libvirt: $v booted in ${secs}s as a libvirt domain; $(((b1 - b0) >> 20)) MiB of it from the store"
[ "$b1" -gt "$b0" ] || { echo "the libvirt boot read nothing from the store" >&2; exit 1; }

echo "== 5. prove the store"
"$bin" --store "$store" verify
for v in "${vmis[@]}"; do
    "$bin" --store "$store" export "$v" -o "$work/out.yolo" > /dev/null
    cmp "$work/boot-images/$v.yolo" "$work/out.yolo"
done
echo "export: every boot image byte-identical to the one imported"
"$bin" --store "$store" rm "${vmis[1]}"
"$bin" --store "$store" gc
"$bin" --store "$store" verify
for v in "${vmis[@]}"; do
    cmp "$family/$v" "$mnt/$v"
done
echo "rm + gc while mounted: every VMI still reads back byte for byte through the mount"
umount "$mnt"; wait "$pid"
tail -1 "$work/mount.log"
scripts/slow-disk.sh down "$disk"
echo "Demo complete."
