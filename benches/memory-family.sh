#!/usr/bin/env bash
# Daemon memory on the real family: resident memory of a mount whose store
# holds the boot image of one VMI, against one holding all five, after each
# served VMI's recorded boot reads were replayed through it.
#
#   benches/memory-family.sh [FAMILY_DIR] [BOOT_IMAGES_DIR]
#
# Defaults: /var/tmp/yolo-family and /var/tmp/yolo-demo/boot-images.
set -euo pipefail
cd "$(dirname "$0")/.."
family=$(realpath "${1:-/var/tmp/yolo-family}")
images=$(realpath "${2:-/var/tmp/yolo-demo/boot-images}")
Y=${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}/release/yolo-store
work=$(mktemp -d /var/tmp/yolo-memory.XXXXXX)
mkdir -p "$work/mnt"
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT

rss_serving() { # VMI names...: VmRSS (KiB) after replaying their boots
    rm -rf "$work/store"
    for v in "$@"; do "$Y" --store "$work/store" import "$images/$v.qcow2.yolo" >/dev/null; done
    "$Y" --store "$work/store" mount --images "$family" "$work/mnt" 2>/dev/null &
    local pid=$!
    until python3 -c "import json,sys; sys.exit(not json.load(open('$work/mnt/.yolo-status'))['startup_verification_done'])" 2>/dev/null; do
        sleep 0.2
    done
    for v in "$@"; do benches/replay.py "$work/mnt/$v.qcow2" "$images/$v.qcow2.trace" >/dev/null; done
    sleep 1 # let the preloads finish
    # The server process serves (and holds the cache); $pid is its supervisor.
    local server
    server=$(python3 -c "import json; print(json.load(open('$work/mnt/.yolo-status'))['server_pid'])")
    awk '/VmRSS/ {print $2}' "/proc/$server/status"
    umount "$work/mnt"
    wait "$pid"
}
one=$(rss_serving web)
five=$(rss_serving web base cache py dev)
python3 -c "print(f'RSS serving 1 VMI (web): {$one/1024:.1f} MiB; all 5: {$five/1024:.1f} MiB; ratio {$five/$one:.2f}x')"
