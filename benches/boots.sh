#!/usr/bin/env bash
# The paper's boot experiments on real VMs (QEMU, TCG), each boot policy
# against the others in one invocation:
#
#   normal    the backing file read straight from the disk;
#   prefetch  the same, while a prefetcher reads the VMI's boot blocks (the
#             recorded reads) in offset order, as `vmtouch` would;
#   yolo      the backing file on a yolo-store mount of a store holding the
#             family's boot images (preload on first open, the default).
#
# Scenarios: one VM; N VMs of different VMIs at once; N VMs of the same VMI
# at once; one VM, then the others at once. Each cold (drop_caches, and a
# fresh mount), without and with I/O contention (fio random reads with
# direct I/O on the same disk, low CPU so the TCG boots keep their cores).
#
#   benches/boots.sh [FAMILY_DIR] [BOOT_IMAGES_DIR]
#
# Defaults: /var/tmp/yolo-family and /var/tmp/yolo-demo/boot-images, which
# scripts/demo.sh makes. Env: N (VMs at once, default 2: one per core),
# SCENARIOS (default "one many same then"), CONTENDED (the scenarios also
# run under contention, default "one many"). Prints one line per run and a
# markdown table at the end. About 30 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
family=$(realpath "${1:-/var/tmp/yolo-family}")
images=$(realpath "${2:-/var/tmp/yolo-demo/boot-images}")
n=${N:-2}
scenarios=${SCENARIOS:-"one many same then"}
contended=${CONTENDED:-"one many"}
Y=${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}/release/yolo-store
command -v fio >/dev/null || apt-get install -y -q --no-install-recommends fio >/dev/null

work=$(mktemp -d /var/tmp/yolo-boots.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    umount "$mnt" 2>/dev/null || true
    pkill -f "fio --name=contention" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
"$Y" --store "$work/store" import "$images"/*.yolo | tail -1
# The contention job's file, written once up front so the runs only read it.
fio --name=layout --filename="$work/contention.dat" --size=2G --rw=write --bs=1M \
    --direct=1 >/dev/null
vmis=(web base cache py dev)

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

start_contention() {
    case $1 in
    none) ;;
    fio)
        fio --name=contention --filename="$work/contention.dat" --size=2G \
            --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=16 \
            --time_based --runtime=3600 >/dev/null 2>&1 &
        fio_pid=$!
        sleep 2
        ;;
    esac
}
fio_pid=""
stop_contention() {
    [ -n "$fio_pid" ] || return 0
    kill "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
    fio_pid=""
}

mount_pid=""
mount_yolo() {
    "$Y" --store "$work/store" mount --images "$family" "$mnt" 2>"$work/mount.log" &
    mount_pid=$!
    for _ in $(seq 300); do [ -e "$mnt/.yolo-status" ] && break; sleep 0.1; done
    until python3 -c "import json,sys; sys.exit(not json.load(open('$mnt/.yolo-status'))['startup_verification_done'])"; do
        sleep 0.2
    done
}

# The recorded reads of VMI $1, in offset order, read once (the prefetcher).
prefetch() {
    python3 - "$family/$1.qcow2" "$images/$1.qcow2.trace" <<'EOF'
import os, sys
path, trace = sys.argv[1], sys.argv[2]
reads = sorted({(int(l.split()[0]), int(l.split()[1])) for l in open(trace)
                if l.split("#")[0].strip()})
fd = os.open(path, os.O_RDONLY)
for offset, length in reads:
    os.pread(fd, length, offset)
EOF
}

# Boots VMIs "$@" at once under policy $policy; prints each boot's seconds.
boot_all() {
    local dir=$family pids=() outs=()
    [ "$policy" = yolo ] && dir=$mnt
    local i=0
    for v in "$@"; do
        if [ "$policy" = prefetch ]; then prefetch "$v" & fi
        KERNEL_DIR=$family scripts/boot-vm.sh "$dir/$v.qcow2" >"$work/boot.$i" &
        pids+=($!)
        outs+=("$work/boot.$i")
        i=$((i + 1))
    done
    for p in "${pids[@]}"; do wait "$p"; done
    wait # the prefetchers (this runs in a subshell: only its own children)
    cat "${outs[@]}" | tr '\n' ' '
}

results=()
run() { # scenario contention policy
    local scenario=$1 contention=$2
    policy=$3
    drop_caches
    [ "$policy" = yolo ] && mount_yolo
    drop_caches
    start_contention "$contention"
    local times
    case $scenario in
    one) times=$(boot_all web) ;;
    many) times=$(boot_all "${vmis[@]:0:$n}") ;;
    same) times=$(boot_all $(for _ in $(seq "$n"); do echo web; done)) ;;
    then)
        times="first: $(boot_all web)| then: $(boot_all "${vmis[@]:1:$((n - 1))}")"
        ;;
    esac
    stop_contention
    local counters=""
    if [ "$policy" = yolo ]; then
        counters=$("$Y" status "$mnt" | python3 -c "import json,sys; s=json.load(sys.stdin); print(f\"store {s['bytes_from_store']>>20} MiB, file {s['bytes_from_file']>>20} MiB, misses {s['cache']['misses']}\")" 2>/dev/null || echo "?")
        umount "$mnt"
        wait "$mount_pid" || true
    fi
    echo "$scenario | $contention | $policy | $times | $counters"
    results+=("| $scenario | $contention | $policy | $times | $counters |")
}

for scenario in $scenarios; do
    contentions=none
    [[ " $contended " == *" $scenario "* ]] && contentions="none fio"
    for contention in $contentions; do
        for policy in normal prefetch yolo; do
            run "$scenario" "$contention" "$policy"
        done
    done
done
echo
echo "| scenario | contention | policy | boot seconds | mount counters |"
echo "|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
