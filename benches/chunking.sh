#!/usr/bin/env bash
# Which chunking stores a family of boot images in the least space?
#
#   benches/chunking.sh BOOT_IMAGE.yolo ...
#
# Imports the same boot images into one fresh store per chunking, and feeds
# the same block data to casync (CDC, 64 KiB average, zstd; its store is the
# peer) and to zstd -3 per image. Prints stored bytes and the ratio of the
# summed boot images to them. Needs casync and zstd (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 BOOT_IMAGE.yolo ..." >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
work=$(mktemp -d /var/tmp/yolo-chunking.XXXXXX)
trap 'rm -rf "$work"' EXIT

for img in "$@"; do scripts/yolo-blocks.py "$img" > "$work/$(basename "$img").blocks"; done
logical=$(cat "$work"/*.blocks | wc -c)
ratio() { python3 -c "print(f'{$logical / $1:.2f}x')"; }
echo "boot images: $#, summed block data: $logical bytes ($((logical >> 20)) MiB)"
printf '%-34s %14s %10s %8s\n' "method" "stored bytes" "ratio" "chunks"

yolo() { # yolo CHUNKING LEVEL: one store, its stored bytes
    local s="$work/store"
    "$bin" --store "$s" init --chunking "$1" --zstd-level "$2" >/dev/null
    "$bin" --store "$s" import "${images[@]}" >/dev/null
    read -r stored chunks < <("$bin" --store "$s" stats --json |
        python3 -c 'import json,sys; t=json.load(sys.stdin)["totals"]; print(t["stored_bytes"], t["chunks"])')
    local label="yolo-store $1"
    [ "$2" = 3 ] || label="$label, zstd level $2"
    printf '%-34s %14d %10s %8d\n' "$label" "$stored" "$(ratio "$stored")" "$chunks"
    rm -rf "$s"
}
images=("$@")
for chunking in fixed:4096 fixed:16384 fixed:65536 fastcdc:1024:4096:16384 fastcdc:2048:8192:32768 \
    fastcdc:4096:16384:65536 fastcdc:16384:65536:262144; do
    yolo "$chunking" 3
done
for level in 6 9; do yolo fixed:4096 "$level"; done

mkdir -p "$work/casync.castr"
for b in "$work"/*.blocks; do
    casync make --store="$work/casync.castr" "$b.caibx" "$b" >/dev/null
done
stored=$(find "$work/casync.castr" -type f -name '*.cacnk' -printf '%s\n' | awk '{s+=$1} END {print s}')
chunks=$(find "$work/casync.castr" -type f -name '*.cacnk' | wc -l)
printf '%-34s %14d %10s %8d\n' "casync (CDC 64 KiB avg, zstd)" "$stored" "$(ratio "$stored")" "$chunks"

stored=0
for b in "$work"/*.blocks; do stored=$((stored + $(zstd -3 -q -c "$b" | wc -c))); done
printf '%-34s %14d %10s %8s\n' "zstd -3 per boot image" "$stored" "$(ratio "$stored")" "-"
