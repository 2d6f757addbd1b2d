#!/usr/bin/env bash
# Import throughput against `zstd -3 -T2` on the same bytes, in one run.
#
#   benches/import.sh [BOOT_IMAGE.yolo ...]
#
# Without arguments it builds a ~256 MiB boot image from real files of this
# machine (/usr/lib: binaries, libraries, text), all blocks in a shuffled
# order. Prints MB/s for: zstd -3 -T2 over the raw block data (the baseline),
# import into an empty store (new data), and re-import of the same images
# (everything already stored), with the ratios the issue asks for.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
work=$(mktemp -d /var/tmp/yolo-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

images=("$@")
if [ ${#images[@]} -eq 0 ]; then
    find /usr/lib -type f -size +4k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null \
        | head -c $((256 << 20)) > "$work/vmi.img" || true
    blocks=$(( $(stat -c %s "$work/vmi.img") / 4096 ))
    seq 0 $((blocks - 1)) | shuf --random-source=<(yes) | awk '{print $1 * 4096, 4096}' > "$work/trace"
    "$bin" capture --trace "$work/trace" "$work/vmi.img" -o "$work/vmi.yolo" >/dev/null
    images=("$work/vmi.yolo")
fi

# The baseline compresses the same bytes import reads: the .yolo files
# (block data plus 8 bytes of block id per 4 KiB block, 0.2% more).
cat "${images[@]}" > "$work/raw"
raw="$work/raw"
bytes=$(stat -c %s "$raw")
echo "data: ${#images[@]} boot image(s), $((bytes >> 20)) MiB of block data; $(nproc) cores"

# Rounds of: zstd, import into an empty store, re-import; the best time of
# each over the rounds. Interleaved, so a noisy spell on this shared machine
# slows the baseline as much as what is compared with it.
ROUNDS=${ROUNDS:-5}
timed() { # seconds that "$@" took
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
    python3 -c "print($t1 - $t0)"
}
min() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }
mbps() { python3 -c "print(f'{$bytes / $1 / 1e6:.0f}')"; }
zs=(); news=(); agains=()
for _ in $(seq "$ROUNDS"); do
    sync
    zs+=("$(timed zstd -3 -T2 -q -c "$raw")")
    rm -rf "$work/store"; sync
    news+=("$(timed "$bin" --store "$work/store" import "${images[@]}")")
    agains+=("$(timed "$bin" --store "$work/store" import "${images[@]}")")
done
t_zstd=$(min "${zs[@]}"); t_new=$(min "${news[@]}"); t_again=$(min "${agains[@]}")

printf '%-32s %8s %8s\n' "run" "seconds" "MB/s"
printf '%-32s %8.2f %8s\n' "zstd -3 -T2 (baseline)" "$t_zstd" "$(mbps "$t_zstd")"
printf '%-32s %8.2f %8s\n' "import, empty store" "$t_new" "$(mbps "$t_new")"
printf '%-32s %8.2f %8s\n' "re-import, all stored" "$t_again" "$(mbps "$t_again")"
python3 -c "print(f'import / zstd throughput: {$t_zstd / $t_new:.2f}x (target >= 0.6x)'); print(f're-import / zstd throughput: {$t_zstd / $t_again:.2f}x (target >= 3x)')"
"$bin" --store "$work/store" stats | sed -n '4,10p'
