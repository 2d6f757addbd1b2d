#!/usr/bin/env bash
# Read throughput through a supervised mount when its server reads one shared
# /dev/fuse descriptor (what the takeover needs) against one cloned per
# request loop (what `mount` did before issue 13). Cloned descriptors break
# the takeover, so the comparison needs a build with this one line of
# src/fuse/takeover.rs changed:
#     config.clone_fd = false;
#  -> config.clone_fd = std::env::var_os("YOLO_CLONE_FD").is_some();
#
#   benches/takeover-clone-fd.sh PATCHED_BINARY     (root; fuse3, bc)
#
# A 512 MiB file with no boot image (every byte falls through to the file,
# from the page cache), 4 concurrent dd readers with O_DIRECT: 128 KiB reads
# of the whole file, then 16 384 reads of 4 KiB each; modes alternate 3 times.
set -euo pipefail
Y=$(realpath "$1")
W=$(mktemp -d /var/tmp/yolo-clone-fd.XXXXXX)
trap 'umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/images" "$W/mnt"
head -c 512M /dev/urandom > "$W/images/plain.img"
head -c 4M /dev/urandom > "$W/images/small.img"
printf '0 4096\n' > "$W/t"
"$Y" capture --trace "$W/t" "$W/images/small.img" -o "$W/small.yolo" >/dev/null 2>&1
"$Y" --store "$W/store" import "$W/small.yolo" >/dev/null
for mode in shared cloned shared cloned shared cloned; do
    if [ "$mode" = cloned ]; then export YOLO_CLONE_FD=1; else unset YOLO_CLONE_FD; fi
    "$Y" --store "$W/store" mount --images "$W/images" "$W/mnt" 2>"$W/mount.log" &
    pid=$!
    for _ in $(seq 100); do [ -e "$W/mnt/.yolo-status" ] && break; sleep 0.1; done
    start=$(date +%s.%N)
    ds=()
    for _ in 1 2 3 4; do dd if="$W/mnt/plain.img" of=/dev/null bs=128k iflag=direct status=none & ds+=($!); done
    wait "${ds[@]}"
    end=$(date +%s.%N)
    ds=()
    for i in 1 2 3 4; do
        dd if="$W/mnt/plain.img" of=/dev/null bs=4k count=16384 skip=$((i * 20000)) iflag=direct status=none &
        ds+=($!)
    done
    wait "${ds[@]}"
    end4=$(date +%s.%N)
    echo "$mode: 4 readers O_DIRECT: 128k $(echo "2048 / ($end - $start)" | bc) MiB/s; 4k $(echo "65536 / ($end4 - $end)" | bc) reads/s; load $(cut -d' ' -f1 /proc/loadavg)"
    umount "$W/mnt"
    wait "$pid"
done
