#!/usr/bin/env bash
# The paper's I/O-only experiment (Section V, Figures 10 and 11 without the
# CPU of a boot): N recorded boot traces replayed at once, for N = 1, 2, 4,
# 8, 16, with N distinct VMIs and with one VMI shared by the N, under the
# policies normal / then (one then others) / prefetch / yolo, with the VMIs
# on an emulated slow disk (scripts/slow-disk.sh) and the store on the fast
# one. Every process that reads the VMIs (the replays, the prefetchers, the
# yolo-store daemon) runs in the disk's throttled cgroup.
#
#   benches/paper-io.sh [FAMILY_DIR] [RECORD_DIR] [OUT_DIR]
#
# FAMILY_DIR (default /var/tmp/yolo-family) holds the VMIs; RECORD_DIR
# (default /var/tmp/yolo-demo/boot-images) what a record mount wrote for
# each: NAME.yolo and NAME.trace. OUT_DIR (default docs/figures) gets
# paper-io.csv (appended) and the figures. Env: PROFILES (default hdd),
# NS (default "1 2 4 8 16"), POLICIES (default "normal then prefetch yolo"),
# MODES (default "distinct shared"). Needs root.
#
# More distinct VMIs than the family has: member k of N is a byte copy of
# family VMI k mod 5 under its own name, on its own blocks of the slow disk
# (so its reads are its own, as a distinct VMI's are); its boot image is
# captured from the same trace and imported under its name (the store
# deduplicates it to the original's chunks).
set -euo pipefail
cd "$(dirname "$0")/.."
family=$(realpath "${1:-/var/tmp/yolo-family}")
rec=$(realpath "${2:-/var/tmp/yolo-demo/boot-images}")
out=$(realpath -m "${3:-docs/figures}")
profiles=${PROFILES:-hdd}
ns=${NS:-1 2 4 8 16}
policies=${POLICIES:-normal then prefetch yolo}
modes=${MODES:-distinct shared}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
# YOLO_STORE_BIN: a binary built before (a shared target directory may hold
# another branch's build by the time this runs).
bin=${YOLO_STORE_BIN:-$CARGO_TARGET_DIR/release/yolo-store}
[ -n "${YOLO_STORE_BIN:-}" ] || cargo build --release -q
work=$(mktemp -d /var/tmp/yolo-paper-io.XXXXXX)
disk=$work/disk mnt=$work/mnt store=$work/store
mkdir -p "$mnt" "$out"
mount_pid=""
cleanup() {
    umount "$mnt" 2>/dev/null || true
    [ -n "$mount_pid" ] && wait "$mount_pid" 2>/dev/null || true
    scripts/slow-disk.sh down "$disk" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

base=()
for t in "$rec"/*.trace; do base+=("$(basename "$t" .trace)"); done
[ ${#base[@]} -gt 0 ] || { echo "no NAME.trace in $rec" >&2; exit 1; }
maxn=0
for n in $ns; do [ "$n" -gt "$maxn" ] && maxn=$n; done
# Member k: a family VMI (k < 5) or a copy of one.
member() { local k=$1 b=${base[$(($1 % ${#base[@]}))]}; [ "$k" -lt ${#base[@]} ] && echo "$b" || echo "c$k-$b"; }
trace_of() { echo "$rec/${base[$(($1 % ${#base[@]}))]}.trace"; }

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
status() { python3 -c "import json,sys; d=json.load(open('$mnt/.yolo-status')); print(eval(sys.argv[1]))" "$1"; }
mount_yolo() {
    # Started outside the group: it hashes every VMI once at mount time (a
    # step the paper's yolofs does not have), then joins the group before
    # any VM opens a file, so its fall-through reads pay the device budget.
    "$bin" --store "$store" mount --images "$disk" "$mnt" 2>>"$work/mount.log" &
    mount_pid=$!
    for _ in $(seq 300); do [ -e "$mnt/.yolo-status" ] && break; sleep 0.1; done
    until [ "$(status "d['startup_verification_done']")" = True ]; do
        kill -0 "$mount_pid" || { cat "$work/mount.log" >&2; exit 1; }
        sleep 0.2
    done
    # The supervisor and the server process that reads the VMIs.
    scripts/slow-disk.sh join "$disk" "$mount_pid" "$(status "d['server_pid']")"
}
unmount_yolo() { umount "$mnt"; wait "$mount_pid" || true; mount_pid=""; }
counters() { scripts/slow-disk.sh stats "$disk" | sed 's/^reads=\([0-9]*\) read_bytes=\([0-9]*\).*/\1 \2/'; }

csv=$out/paper-io.csv
[ -f "$csv" ] || echo "date,profile,vmis,n,policy,mean_s,max_s,device_reads,device_read_mib,load1" > "$csv"
for profile in $profiles; do
    SIZE=${SIZE:-24G} scripts/slow-disk.sh up "$profile" "$disk"
    for ((k = 0; k < maxn; k++)); do
        m=$(member "$k")
        cp "$family/${base[$((k % ${#base[@]}))]}" "$disk/$m"
        if [ "$k" -lt ${#base[@]} ]; then
            cp "$rec/$m.yolo" "$work/$m.yolo"
        else
            "$bin" capture --trace "$(trace_of "$k")" "$disk/$m" -o "$work/$m.yolo" >/dev/null
        fi
    done
    sync
    rm -rf "$store"
    "$bin" --store "$store" import "$work"/*.yolo | tail -1
    echo "== $profile: $(scripts/slow-disk.sh stats "$disk")"
    printf '%-8s %-9s %3s %-9s %9s %9s %8s %9s %s\n' profile vmis N policy "mean s" "max s" "dev reads" "dev MiB" load
    for mode in $modes; do
        for n in $ns; do
            for policy in $policies; do
                dir=$disk
                args=()
                for ((k = 0; k < n; k++)); do
                    kk=$k; [ "$mode" = shared ] && kk=0
                    args+=("$(member "$kk")" "$(trace_of "$kk")")
                done
                drop
                [ "$policy" = yolo ] && mount_yolo && dir=$mnt
                drop
                for ((i = 0; i < ${#args[@]}; i += 2)); do args[i]=$dir/${args[i]}; done
                read -r r0 b0 < <(counters)
                result=$(scripts/slow-disk.sh run "$disk" -- benches/paper-io.py "$policy" "${args[@]}")
                read -r r1 b1 < <(counters)
                extra=""
                if [ "$policy" = yolo ]; then
                    extra=" (mount: $(status "d['bytes_from_store']>>20") MiB from the store, $(status "d['bytes_from_file']>>20") MiB from files)"
                    unmount_yolo
                fi
                load=$(cut -d' ' -f1 /proc/loadavg)
                read -r mean max < <(python3 -c "import json,sys; t=json.loads(sys.argv[1])['times']; print(f'{sum(t)/len(t):.3f} {max(t):.3f}')" "$result")
                printf '%-8s %-9s %3s %-9s %9s %9s %8s %9s %s%s\n' "$profile" "$mode" "$n" "$policy" "$mean" "$max" \
                    $((r1 - r0)) $(((b1 - b0) >> 20)) "$load" "$extra"
                echo "$(date -u +%FT%TZ),$profile,$mode,$n,$policy,$mean,$max,$((r1 - r0)),$(((b1 - b0) >> 20)),$load" >> "$csv"
            done
        done
    done
    scripts/slow-disk.sh down "$disk"
done
benches/paper-plot.py "$csv" "$out"
