#!/usr/bin/env bash
# Boot-trace replay: the reads a real boot made, replayed in time order with
# their sizes, against the VMI file directly and through the yolo mount;
# cold (drop_caches, fresh mount) and warm; with and without I/O contention.
# This isolates the I/O path from the CPU-bound TCG boot.
#
#   benches/replay.sh IMAGES_DIR RECORD_DIR
#
# RECORD_DIR holds what `yolo-store record` wrote (NAME.yolo and NAME.trace
# for each VMI booted on the record mount); IMAGES_DIR holds the VMIs.
# Needs root, stress-ng.
set -euo pipefail
cd "$(dirname "$0")/.."
images=$(realpath "$1"); rec=$(realpath "$2")
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
work=$(mktemp -d /var/tmp/yolo-replay.XXXXXX)
mnt="$work/mnt"; mkdir -p "$mnt"
stress=""
cleanup() {
    [ -n "$stress" ] && kill "$stress" 2>/dev/null || true
    umount "$mnt" 2>/dev/null || true
    sleep 0.3; rm -rf "$work"
}
trap cleanup EXIT
"$bin" --store "$work/store" import "$rec"/*.yolo > /dev/null

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mount_fresh() {
    umount "$mnt" 2>/dev/null || true
    "$bin" --store "$work/store" mount --images "$images" "$mnt" 2>>"$work/mount.log" &
    local pid=$!
    for _ in $(seq 200); do [ -e "$mnt/.yolo-status" ] && break; sleep 0.05; done
    # As on a node, the mount has checked its VMIs before a VM starts.
    until python3 -c "import json,sys; sys.exit(not json.load(open('$mnt/.yolo-status'))['startup_verification_done'])" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "the mount exited:" >&2; cat "$work/mount.log" >&2; exit 1; }
        sleep 0.1
    done
}
replay() { benches/replay.py "$1" "$2" | cut -d' ' -f1; }

echo "machine: $(nproc) cores; the disk is cached by the host, so 'cold' reads run near memory speed"
printf '%-12s %-12s %10s %10s %10s %10s\n' "VMI" "contention" "direct cold" "yolo cold" "direct warm" "yolo warm"
for trace in "$rec"/*.trace; do
    name=$(basename "$trace" .trace)
    for contention in none stress-ng; do
        if [ "$contention" = stress-ng ]; then
            # Two workers writing and reading files on the same disk.
            stress-ng --hdd 2 --hdd-bytes 512M --temp-path "$work" -q &
            stress=$!; sleep 2
        fi
        drop; dc=$(replay "$images/$name" "$trace")
        dw=$(replay "$images/$name" "$trace")
        mount_fresh; drop
        # The first open starts the preload; the replay races it, as a VM would.
        yc=$(replay "$mnt/$name" "$trace")
        yw=$(replay "$mnt/$name" "$trace")
        printf '%-12s %-12s %10s %10s %10s %10s\n' "$name" "$contention" "$dc" "$yc" "$dw" "$yw"
        if [ -n "$stress" ]; then kill "$stress"; wait "$stress" 2>/dev/null || true; stress=""; fi
    done
done
umount "$mnt"
