#!/usr/bin/env bash
# The paper's real-boot experiments (Figures 11 and 12) on the emulated HDD
# (scripts/slow-disk.sh hdd: 150 IOPS, 150 MB/s): QEMU (TCG) boots to the
# boot-complete marker, fresh qcow2 overlays, the VMIs on the throttled
# disk, the store on the fast disk, QEMU and the mount's server in the
# throttled group. Each run cold (page cache dropped; a fresh mount per
# yolo run, its VMIs' recorded blocks checked before it joins the group).
#
# Policies: normal (the VMI read from the slow disk), prefetch (the same,
# beside a reader of the VMI's recorded blocks in offset order, as vmtouch
# would, in the same groups as QEMU), yolo (the mount; its server joins
# the groups too).
#
#   contention  one VM (base.qcow2) beside K = 0..4 random 4 KiB O_DIRECT
#               readers of the same disk (Figure 12);
#   many        N = 1, 2, 4 distinct VMIs at once (Figure 11);
#   memory      one VM in a memory cgroup of MEM_LIMIT MiB (default 1536:
#               the node's memory, scaled to one VM whose QEMU peaks at
#               about 900 MiB), beside a hog holding X MiB of it (stress-ng,
#               memory touched once and kept, no CPU taken from the TCG
#               boot), so the page cache left to the boot shrinks as X
#               grows (Figure 13). QEMU, the prefetcher and the hog live in
#               that cgroup; the mount does not: its memory stands for the
#               dedicated device the paper emulated with memory (there is
#               no swap here, so inside the cgroup the hog would OOM-kill
#               the VM or the daemon rather than page either out);
#   fast        one VM read from the unthrottled disk: the boot without the
#               slow disk, against which each hdd boot's I/O share is
#               1 - fast / hdd.
#
#   benches/hdd-boots.sh      (after scripts/demo.sh: its family and boot images)
#
# Env: KS (default "0 1 2 4"), NS (default "1 2 4"), MEMS (default
# "0 448 576"), POLICIES (default "normal prefetch yolo"); an empty list
# skips its scenario. Writes /var/tmp/yolo-hdd-boots/boots.csv:
# scenario,x,policy,seconds,device_reads,refaults (the memory cgroup's page
# cache refaults: the boot data read again after it was evicted).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
family="${FAMILY_DIR:-/var/tmp/yolo-family}"
export KERNEL_DIR="$family"
images="${DEMO_DIR:-/var/tmp/yolo-demo}/boot-images"
work=/var/tmp/yolo-hdd-boots
disk=$work/disk
mnt=$work/mnt
memcg=/sys/fs/cgroup/memory/yolo-hdd-boots
mem_limit=${MEM_LIMIT:-1536}
policies=${POLICIES:-normal prefetch yolo}
cleanup() {
    umount "$mnt" 2>/dev/null || true
    mem_down
    scripts/slow-disk.sh down "$disk" > /dev/null 2>&1 || true
}
# The memory cgroup of the memory scenario ("" outside it): QEMU, the
# prefetcher and the hog join it.
in_memcg=""
hog=""
mem_up() { # HOG_MIB
    [ -d /sys/fs/cgroup/memory ] || { echo "no cgroup v1 memory controller" >&2; exit 1; }
    # Charges do not move with a process (this kernel refuses
    # move_charge_at_immigrate): everything joins before the boot starts,
    # and the boot's page cache and the mount's preload are charged here.
    mkdir -p "$memcg"
    echo $((mem_limit << 20)) > "$memcg/memory.limit_in_bytes"
    in_memcg=$memcg
    if [ "$1" -gt 0 ]; then
        sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$memcg" \
            stress-ng --vm 1 --vm-bytes "${1}M" --vm-keep --vm-hang 0 --vm-populate -q &
        hog=$!
        # Held once it is resident: wait for the cgroup to hold it.
        until [ "$(cat "$memcg/memory.usage_in_bytes")" -ge $(($1 << 20)) ]; do sleep 0.2; done
    fi
}
mem_down() {
    [ -n "$hog" ] && { kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true; }
    hog=""; in_memcg=""
    pkill -f "stress-ng --vm 1" 2>/dev/null || true
    [ -d "$memcg" ] || return 0
    for _ in $(seq 50); do rmdir "$memcg" 2>/dev/null && return 0; sleep 0.2; done
    echo "could not remove $memcg" >&2
}
# Runs a command in the throttled group and, in the memory scenario, in the
# memory cgroup.
in_groups() {
    if [ -n "$in_memcg" ]; then
        scripts/slow-disk.sh run "$disk" -- sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$in_memcg" "$@"
    else
        scripts/slow-disk.sh run "$disk" -- "$@"
    fi
}
refaults_now() {
    if [ -n "$in_memcg" ]; then awk '$1 == "total_workingset_refault_file" {print $2}' "$memcg/memory.stat"; else echo 0; fi
}
trap cleanup EXIT
cleanup; rm -rf "$work"; mkdir -p "$mnt"
"$bin" --store "$work/store" import "$images"/*.yolo > /dev/null
vmis=(base.qcow2 dev.qcow2 py.qcow2 web.qcow2)
SIZE=8G scripts/slow-disk.sh up hdd "$disk" > /dev/null
for v in "${vmis[@]}"; do cp "$family/$v" "$disk/$v"; done
sync
readers=()
start_readers() { # K
    for ((i = 0; i < $1; i++)); do
        scripts/slow-disk.sh run "$disk" -- python3 - "$disk/${vmis[$((i % ${#vmis[@]}))]}" "$i" <<'PY' &
import mmap, os, random, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
size = os.fstat(fd).st_size // 4096
buf = mmap.mmap(-1, 4096)
rng = random.Random(int(sys.argv[2]))
while True:
    os.preadv(fd, [buf], rng.randrange(size) * 4096)
PY
        readers+=($!)
    done
}
stop_readers() { for p in "${readers[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; readers=(); }
reads_now() { scripts/slow-disk.sh stats "$disk" | sed 's/ .*//; s/reads=//'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
status() { python3 -c "import json,sys; d=json.load(open('$mnt/.yolo-status')); print(eval(sys.argv[1]))" "$1"; }
mount_yolo() {
    "$bin" --store "$work/store" mount --images "$disk" "$mnt" 2>> "$work/mount.log" &
    local pid=$!
    for _ in $(seq 300); do [ -e "$mnt/.yolo-status" ] && break; sleep 0.1; done
    until [ "$(status "d['startup_verification_done']")" = True ]; do sleep 0.2; done
    local server; server=$(status "d['server_pid']")
    scripts/slow-disk.sh join "$disk" "$pid" "$server"
}
# The recorded reads of VMI $1 in offset order, read once (the prefetcher).
prefetch() {
    in_groups python3 - "$disk/$1" "$images/$1.trace" <<'PY'
import os, sys
reads = sorted({(int(l.split()[0]), int(l.split()[1])) for l in open(sys.argv[2])
                if l.split("#")[0].strip()})
fd = os.open(sys.argv[1], os.O_RDONLY)
for offset, length in reads:
    os.pread(fd, length, offset)
PY
}
boot_all() { # DIR VMI...: boots them at once, prints the seconds until all are up
    local dir=$1 pids=() start end; shift
    start=$(date +%s.%N)
    for v in "$@"; do
        [ "$policy" = prefetch ] && prefetch "$v" &
        if [ "$dir" = fast ]; then
            scripts/boot-vm.sh "$family/$v" > /dev/null &
        else
            in_groups scripts/boot-vm.sh "$dir/$v" > /dev/null &
        fi
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    wait # the prefetchers
    end=$(date +%s.%N)
    python3 -c "print(f'{$end - $start:.1f}')"
}
csv=$work/boots.csv
echo "scenario,x,policy,seconds,device_reads,refaults" > "$csv"
run() { # SCENARIO X K HOG_MIB VMI...
    local scenario=$1 x=$2 k=$3 hog_mib=$4; shift 4
    for policy in $policies; do
        local dir=$disk
        [ "$scenario" = memory ] && mem_up "$hog_mib"
        if [ $policy = yolo ]; then mount_yolo; dir=$mnt; fi
        [ "$scenario" = fast ] && dir=fast
        drop; local r0 f0; r0=$(reads_now); f0=$(refaults_now); start_readers "$k"
        local secs; secs=$(boot_all "$dir" "$@")
        stop_readers; local r1 f1; r1=$(reads_now); f1=$(refaults_now)
        [ $policy = yolo ] && umount "$mnt"
        [ "$scenario" = memory ] && mem_down
        echo "$scenario,$x,$policy,$secs,$((r1 - r0)),$((f1 - f0))" | tee -a "$csv"
        if [ "$scenario" = fast ]; then break; fi # no slow disk: one policy
    done
}
run fast 0 0 0 base.qcow2
for k in ${KS-0 1 2 4}; do run contention "$k" "$k" 0 base.qcow2; done
for n in ${NS-1 2 4}; do run many "$n" 0 0 "${vmis[@]:0:$n}"; done
command -v stress-ng > /dev/null || scripts/setup.sh stress-ng > /dev/null
for m in ${MEMS-0 448 576}; do run memory "$m" 0 "$m" base.qcow2; done
python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
t = {(r["scenario"], r["x"], r["policy"]): float(r["seconds"]) for r in rows}
fast = t.get(("fast", "0", "normal"))
for (s, x, p), v in sorted(t.items()):
    if p == "normal" and (s, x, "yolo") in t:
        y = t[(s, x, "yolo")]
        line = f"{s} {x}: normal {v:.1f} s, yolo {y:.1f} s, {v / y:.2f}x"
        if (s, x, "prefetch") in t:
            line += f", prefetch {t[(s, x, 'prefetch')]:.1f} s ({t[(s, x, 'prefetch')] / y:.2f}x yolo)"
        if fast and s != "fast":
            line += f"; I/O share normal {1 - fast / v:.0%}, yolo {max(0, 1 - fast / y):.0%}"
        print(line)
if fast:
    print(f"fast disk: {fast:.1f} s")
PY
