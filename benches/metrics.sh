#!/usr/bin/env bash
# The cost of a scrape at the label bound, and what it costs reads.
#
#   benches/metrics.sh          (root; needs fuse3, curl, promtool)
#
# Imports boot images of 80 small VMIs (1 MiB each, 64 KiB boot image),
# mounts them with --metrics, reads each file once (so 64 VMIs get a
# latency histogram of their own and the other 16 land under vmi="/other"),
# then times 200 scrapes, one after the other, and prints the
# body's size, its series count and promtool's verdict. Last, 20 000 reads
# of 4 KiB (O_DIRECT, cache hits) through the mount: alone, beside 5 curl
# loops that get a 404, and beside 5 curl loops that scrape /metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
work=$(mktemp -d /var/tmp/yolo-metrics-bench.XXXXXX)
pid=""
cleanup() {
    umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/images" "$work/mnt"
awk 'BEGIN { for (i = 0; i < 16; i++) print i * 4096, 4096 }' > "$work/trace"
for i in $(seq -w 1 80); do
    head -c $((1 << 20)) /dev/urandom > "$work/images/vmi$i.img"
    "$bin" capture --trace "$work/trace" "$work/images/vmi$i.img" -o "$work/vmi$i.yolo" >/dev/null
done
"$bin" --store "$work/store" import "$work"/vmi*.yolo >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" --store "$work/store" mount --images "$work/images" "$work/mnt" --metrics "127.0.0.1:$port" 2>"$work/mount.log" &
pid=$!
until grep -q '"startup_verification_done": true' "$work/mnt/.yolo-status" 2>/dev/null; do sleep 0.1; done
for f in "$work"/images/*.img; do dd if="$work/mnt/$(basename "$f")" of=/dev/null bs=64k count=1 status=none; done

url="http://127.0.0.1:$port/metrics"
curl -sf "$url" > "$work/body"
echo "body: $(wc -c < "$work/body") bytes, $(grep -vc '^#' "$work/body") series," \
    "$(grep -o 'yolo_read_latency_seconds_count{vmi="[^"]*"}' "$work/body" | wc -l) latency labels"
echo "promtool check metrics: $(promtool check metrics < "$work/body" 2>&1 && echo ok)"
python3 - "$url" <<'EOF'
import sys, time, urllib.request
t = time.perf_counter()
for _ in range(200):
    urllib.request.urlopen(sys.argv[1]).read()
print(f"200 scrapes, one after the other: {(time.perf_counter() - t) / 200 * 1e3:.2f} ms each")
EOF

reads() { # 20 000 random 4 KiB O_DIRECT reads of the boot-image blocks
    python3 - "$work/mnt" <<'EOF'
import mmap, os, random, sys, time
buf = mmap.mmap(-1, 4096)
fds = [os.open(os.path.join(sys.argv[1], f"vmi{i:02d}.img"), os.O_RDONLY | os.O_DIRECT) for i in range(1, 81)]
rng = random.Random(1)
t = time.perf_counter()
for _ in range(20000):
    os.preadv(rng.choice(fds), [buf], rng.randrange(16) * 4096)
print(f"{(time.perf_counter() - t) / 20000 * 1e6:.1f} us per read")
EOF
}
# The control: the same 5 curl loops asking for a page that is not there
# (a 404 costs the server nothing), so what differs is the scrape itself.
with_loops() { # PATH
    local loops=()
    for _ in 1 2 3 4 5; do
        (while :; do curl -s -o /dev/null "http://127.0.0.1:$port$1" || true; done) &
        loops+=($!)
    done
    reads
    kill "${loops[@]}"
    wait "${loops[@]}" 2>/dev/null || true
}
echo "reads alone: $(reads)"
echo "reads while 5 curl loops get a 404: $(with_loops /nope)"
echo "reads while 5 curl loops scrape /metrics: $(with_loops /metrics)"
