#!/usr/bin/env bash
# Reads through the mount against baselines measured in the same run.
#
#   benches/mount.sh            (root; needs fio, bindfs, fuse3)
#
# Builds a 512 MiB VMI from real files of this machine (/usr/lib) and a boot
# image holding every block of it, imports it, then measures:
#   1. cache hits: sequential 128 KiB and random 4 KiB reads with O_DIRECT
#      through a mount whose cache holds the whole boot image (so each read
#      reaches the daemon and is served from its cache), beside the same
#      reads of the file from the page cache;
#   2. the paper's Table II: sequential read of the whole VMI and 4 KiB
#      random reads with a cold page cache (drop_caches before each run),
#      directly, through bindfs (a standard pass-through FUSE) and through
#      our mount of a VMI with no boot image (every byte falls through);
#   3. the daemon's resident memory serving the boot images of 5 VMIs that
#      share a base OS, against serving 1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
work=$(mktemp -d /var/tmp/yolo-mount-bench.XXXXXX)
mounts=()
cleanup() {
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/images" "$work/plain" "$work/mnt" "$work/plainmnt" "$work/bind"
size=$((512 << 20))
find /usr/lib -type f -size +4k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null \
    | head -c "$size" > "$work/images/vmi.img" || true
cp "$work/images/vmi.img" "$work/plain/vmi.img"
awk -v n=$((size / 4096)) 'BEGIN { for (i = 0; i < n; i++) print i * 4096, 4096 }' > "$work/trace"
"$bin" capture --trace "$work/trace" "$work/images/vmi.img" -o "$work/vmi.yolo" >/dev/null
"$bin" --store "$work/store" import "$work/vmi.yolo" >/dev/null

mount_yolo() { # IMAGES MOUNTPOINT ARGS...
    local images=$1 mnt=$2; shift 2
    "$bin" --store "$work/store" mount --images "$images" "$mnt" "$@" 2>"$work/mount.log" &
    mounts+=("$mnt")
    for _ in $(seq 200); do [ -e "$mnt/.yolo-status" ] && return; sleep 0.05; done
    cat "$work/mount.log" >&2; exit 1
}
status() { python3 -c "import json,sys; d=json.load(open('$1/.yolo-status')); print(eval(sys.argv[1]))" "$2"; }
fio_json() { # NAME FILE RW BS DIRECT [extra...]
    local name=$1 file=$2 rw=$3 bs=$4 direct=$5; shift 5
    fio --name="$name" --filename="$file" --rw="$rw" --bs="$bs" --direct="$direct" \
        --ioengine=psync --size="$size" --output-format=json --randrepeat=1 "$@" 2>/dev/null
}
mbps() { python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['read']; print(f\"{j['bw_bytes']/1e6:.0f}\")"; }
lat() { # p50 p99 of completion latency, microseconds
    python3 -c "import json,sys; p=json.load(sys.stdin)['jobs'][0]['read']['clat_ns']['percentile']; print(f\"{p['50.000000']/1e3:.1f} {p['99.000000']/1e3:.1f}\")"
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

echo "machine: $(nproc) cores, kernel $(uname -r); VMI: $((size >> 20)) MiB of /usr/lib"
echo
echo "== 1. cache hits (boot image fully preloaded; O_DIRECT so reads reach the daemon)"
mount_yolo "$work/images" "$work/mnt" --preload all --cache-size 1G
until [ "$(status "$work/mnt" "d['preload_chunks_done'] >= d['preload_chunks_total'] > 0")" = True ]; do sleep 0.2; done
cat "$work/plain/vmi.img" > /dev/null # page cache for the direct baseline
seq_mount=$(fio_json seq "$work/mnt/vmi.img" read 128k 1 --loops=3 | mbps)
seq_direct=$(fio_json seq "$work/plain/vmi.img" read 128k 0 --loops=3 | mbps)
read -r p50_mount p99_mount < <(fio_json rand "$work/mnt/vmi.img" randread 4k 1 --number_ios=50000 | lat)
read -r p50_direct p99_direct < <(fio_json rand "$work/plain/vmi.img" randread 4k 0 --number_ios=50000 | lat)
printf '%-44s %10s %10s %10s\n' "" "seq MB/s" "4K p50 us" "4K p99 us"
printf '%-44s %10s %10s %10s\n' "mount, cache hits (128K / 4K O_DIRECT)" "$seq_mount" "$p50_mount" "$p99_mount"
printf '%-44s %10s %10s %10s\n' "file from the page cache (no FUSE)" "$seq_direct" "$p50_direct" "$p99_direct"
echo "store bytes served: $(status "$work/mnt" "d['bytes_from_store']"), from file: $(status "$work/mnt" "d['bytes_from_file']"), chunk failures: $(status "$work/mnt" "d['chunk_failures']")"
umount "$work/mnt"; wait

echo
echo "== 2. Table II: cold page cache, every byte from the file (no boot image)"
echo "   note: this machine's disk is cached by its host, so 'cold' reads run near memory speed"
mount_yolo "$work/plain" "$work/plainmnt"
bindfs -r "$work/plain" "$work/bind"; mounts+=("$work/bind")
printf '%-24s %12s %14s\n' "" "seq MB/s" "rand 4K IOPS"
declare -A seq rand
for what in direct bindfs yolo; do
    case $what in
        direct) f="$work/plain/vmi.img" ;;
        bindfs) f="$work/bind/vmi.img" ;;
        yolo) f="$work/plainmnt/vmi.img" ;;
    esac
    s=0; r=0
    for _ in 1 2 3; do
        drop; s1=$(fio_json seq "$f" read 1M 0 | mbps)
        drop; r1=$(fio_json rand "$f" randread 4k 0 --number_ios=20000 |
            python3 -c "import json,sys; print(f\"{json.load(sys.stdin)['jobs'][0]['read']['iops']:.0f}\")")
        s=$((s > s1 ? s : s1)); r=$((r > r1 ? r : r1))
    done
    seq[$what]=$s; rand[$what]=$r
    printf '%-24s %12s %14s\n' "$what" "$s" "$r"
done
python3 - "${seq[direct]}" "${seq[bindfs]}" "${seq[yolo]}" "${rand[direct]}" "${rand[bindfs]}" "${rand[yolo]}" <<'PY'
import sys
sd, sb, sy, rd, rb, ry = map(float, sys.argv[1:])
print(f"cost of yolo vs bindfs (time ratio, target <= 1.10x): sequential {sb / sy:.2f}x, random {rb / ry:.2f}x")
print(f"cost of yolo vs direct (paper: 1.15x sequential, 1.04x random): sequential {sd / sy:.2f}x, random {rd / ry:.2f}x")
PY
umount "$work/plainmnt" "$work/bind"; wait

echo
echo "== 3. daemon memory: 5 VMIs sharing a base vs 1 (boot images preloaded)"
mkdir -p "$work/family"
base=$((40 << 20)); own=$((4 << 20))
head -c "$base" "$work/plain/vmi.img" > "$work/base.part"
for v in 1 2 3 4 5; do
    { cat "$work/base.part"; dd if="$work/plain/vmi.img" bs="$own" skip=$((20 + v)) count=1 status=none; } > "$work/family/v$v.img"
    awk -v n=$(((base + own) / 4096)) 'BEGIN { for (i = 0; i < n; i++) print i * 4096, 4096 }' > "$work/t"
    "$bin" capture --trace "$work/t" "$work/family/v$v.img" -o "$work/v$v.yolo" >/dev/null
done
rss_serving() { # N: RSS in KiB of a mount serving v1..vN, after preload and a full read
    rm -rf "$work/fstore"
    for v in $(seq "$1"); do "$bin" --store "$work/fstore" import "$work/v$v.yolo" >/dev/null; done
    "$bin" --store "$work/fstore" mount --images "$work/family" "$work/mnt" --preload all 2>/dev/null &
    local pid=$!; mounts+=("$work/mnt")
    for _ in $(seq 200); do [ -e "$work/mnt/.yolo-status" ] && break; sleep 0.05; done
    until [ "$(status "$work/mnt" "d['preload_chunks_done'] >= d['preload_chunks_total'] > 0")" = True ]; do sleep 0.2; done
    for v in $(seq "$1"); do dd if="$work/mnt/v$v.img" of=/dev/null bs=1M iflag=direct status=none; done
    # The server process serves (and holds the cache); $pid is its supervisor.
    local server
    server=$(python3 -c "import json; print(json.load(open('$work/mnt/.yolo-status'))['server_pid'])")
    awk '/VmRSS/ {print $2}' "/proc/$server/status"
    umount "$work/mnt"; wait "$pid"
}
one=$(rss_serving 1); five=$(rss_serving 5)
python3 -c "print(f'RSS serving 1 VMI: {$one/1024:.1f} MiB; 5 VMIs: {$five/1024:.1f} MiB; ratio {$five/$one:.2f}x (target <= 1.5x)')"
