#!/usr/bin/env bash
# Sequential read of a VMI with no boot image: directly, through a mount
# (FUSE passthrough: the kernel reads the file, the daemon sees no read) and
# through a mount without --passthrough (every read through the daemon, as
# before issue 13), cold (drop_caches before each read) and warm (read once,
# then timed). Runs interleaved, ROUNDS times; prints the median and the
# spread of each, and ratios of medians against the direct read measured in
# the same run.
#
#   benches/passthrough.sh [SIZE_MIB] [ROUNDS]      (root; fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-7}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
work=$(mktemp -d /var/tmp/yolo-passthrough-bench.XXXXXX)
mounts=()
cleanup() {
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/images" "$work/pt" "$work/nopt"
# Real files of this machine (compressible like a VMI), topped up if short.
size=$((size_mib << 20))
{ find /usr/lib /usr/share -type f -size +4k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null
  head -c "$size" /dev/urandom; } | head -c "$size" > "$work/images/vmi.img" || true
"$bin" --store "$work/store" init >/dev/null

mount_yolo() { # MOUNTPOINT ARGS...
    local mnt=$1; shift
    "$bin" --store "$work/store" mount --images "$work/images" "$mnt" "$@" 2>>"$work/mount.log" &
    mounts+=("$mnt")
    for _ in $(seq 200); do [ -e "$mnt/.yolo-status" ] && return; sleep 0.05; done
    cat "$work/mount.log" >&2; exit 1
}
mount_yolo "$work/pt" --passthrough
mount_yolo "$work/nopt"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { # FILE: wall and CPU (user + system) seconds of a dd reading it whole in 1 MiB reads
    python3 - "$1" <<'PY'
import os, subprocess, sys, time
start = time.perf_counter()
p = subprocess.Popen(["dd", f"if={sys.argv[1]}", "of=/dev/null", "bs=1M", "status=none"])
_, status, ru = os.wait4(p.pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "dd failed"
print(f"{time.perf_counter() - start:.4f} {ru.ru_utime + ru.ru_stime:.4f}")
PY
}
declare -A file=([direct]="$work/images/vmi.img" [passthrough]="$work/pt/vmi.img" [daemon]="$work/nopt/vmi.img")
out="$work/times"
for r in $(seq "$rounds"); do
    for how in direct passthrough daemon; do
        drop; echo "cold $how $(secs "${file[$how]}")" >> "$out"
        secs "${file[$how]}" > /dev/null
        echo "warm $how $(secs "${file[$how]}")" >> "$out"
    done
done
status() { python3 -c "import json,sys; d=json.load(open('$1/.yolo-status')); print(d['reads'], d['passthrough_opens'], d['passthrough_refused'])"; }
read -r pt_reads pt_opens pt_refused < <(status "$work/pt")
read -r np_reads np_opens _ < <(status "$work/nopt")

echo "machine: $(nproc) cores, kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "VMI: $size_mib MiB (no boot image), dd bs=1M, $rounds rounds interleaved"
echo "daemon reads: passthrough mount $pt_reads ($pt_opens passthrough opens, $pt_refused refused); mount without --passthrough $np_reads"
python3 - "$out" "$size" <<'PY'
import statistics, sys
from collections import defaultdict
wall, cpu = defaultdict(list), defaultdict(list)
for line in open(sys.argv[1]):
    cache, how, w, c = line.split()
    wall[(cache, how)].append(float(w))
    cpu[(cache, how)].append(float(c))
size = int(sys.argv[2])
# Wall-time ratios against direct: of the medians, and per round (each
# read against the direct read of its round), median and spread. Then the
# reader's own CPU time (dd's user + system): with passthrough, as with a
# direct read, all the work is done in the reader's system calls, so this
# compares the two without the other processes of a loaded machine; through
# the daemon most of the work is the daemon's, so it is not comparable there.
def row(label, t, base_t):
    rates = [size / s / 1e6 for s in t]
    per_round = [a / b for a, b in zip(t, base_t)]
    print(f"{label:18} {size / statistics.median(t) / 1e6:11.0f} "
          f"{min(rates):7.0f}..{max(rates):<7.0f} {statistics.median(t) / statistics.median(base_t):7.2f}x "
          f"{statistics.median(per_round):17.2f}x ({min(per_round):.2f}..{max(per_round):.2f})")
print("wall time")
print(f"{'':18} {'median MB/s':>11} {'min..max MB/s':>15} {'medians':>8} {'per round: median (min..max)':>30}")
for cache in ("cold", "warm"):
    for how in ("direct", "passthrough", "daemon"):
        row(f"{cache} {how}", wall[(cache, how)], wall[(cache, "direct")])
print("reader CPU time (dd user + system), MB per CPU second")
for cache in ("cold", "warm"):
    for how in ("direct", "passthrough"):
        row(f"{cache} {how}", cpu[(cache, how)], cpu[(cache, "direct")])
PY
