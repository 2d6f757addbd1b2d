#!/usr/bin/env bash
# The first boot of a VMI on a node whose store is empty, through
# `yolo-store mount --remote` (the lazy remote tier), against a boot from a
# mount of a local store that holds the family and a plain boot of the
# file: real TCG boots (scripts/boot-vm.sh) to the boot-complete marker,
# with a real single-node Ceph radosgw on 127.0.0.1 as the remote.
#
#   benches/remote-boot.sh [FAMILY_DIR] [BOOT_IMAGES_DIR]
#
# Defaults: /var/tmp/yolo-family and /var/tmp/yolo-demo/boot-images (made by
# scripts/demo.sh). Env: VMI (default web.qcow2), RUNS (boots per policy,
# default 1). Page caches are dropped before each boot. Reports the bytes
# the remote mount fetched against the boot image's size (raw, and
# compressed alone in a store), its GETs, and each boot's time. Needs
# scripts/setup.sh ceph and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
family=$(realpath "${1:-/var/tmp/yolo-family}")
images=$(realpath "${2:-/var/tmp/yolo-demo/boot-images}")
vmi=${VMI:-web.qcow2}
runs=${RUNS:-1}
Y=$(realpath "${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}/release/yolo-store")
work=$(mktemp -d /var/tmp/yolo-remote-boot.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
mount_pid=""
cleanup() {
    umount "$mnt" 2>/dev/null || true
    [ -n "$mount_pid" ] && wait "$mount_pid" 2>/dev/null || true
    scripts/ceph-rgw.sh stop "$work/ceph" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
RGW_PORT=${RGW_PORT:-7495} MON_PORT=${MON_PORT:-6805} \
    scripts/ceph-rgw.sh start "$work/ceph" bench >"$work/env"
source "$work/env"
remote=s3://bench/family

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
status() { cat "$mnt/.yolo-status"; }
field() { python3 -c "import json,sys; v=json.load(sys.stdin)
for k in sys.argv[1].split('.'): v=v[k]
print(v)" "$1"; }

# Node A holds the family and pushes it.
"$Y" --store "$work/a" import "$images"/*.yolo | tail -1
"$Y" --store "$work/a" push --remote "$remote" >/dev/null
logical=$("$Y" --store "$work/a" ls --json |
    python3 -c "import json,sys; print([v for v in json.load(sys.stdin) if v['name']=='$vmi'][0]['logical_bytes'])")
# The boot image compressed on its own: what a perfect transfer of it moves.
"$Y" --store "$work/alone" import "$images/$vmi.yolo" >/dev/null
alone=$("$Y" --store "$work/alone" stats --json | field totals.stored_bytes)

# Starts `mount` with ARGS on $mnt and waits until READY (a Python
# expression over the status `s`) holds; sets $ready to the seconds that
# took. (Not in a command substitution: the mount would hold its pipe.)
start_mount() {
    local store=$1 cond=$2; shift 2
    local t0; t0=$(date +%s.%N)
    "$Y" --store "$store" mount --images "$family" "$mnt" "$@" >>"$work/mount.log" 2>&1 &
    mount_pid=$!
    until [ -e "$mnt/.yolo-status" ] && status | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($cond) else 1)" 2>/dev/null; do
        sleep 0.2
    done
    ready=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
}
stop_mount() { umount "$mnt"; wait "$mount_pid" || true; mount_pid=""; }
boot() { KERNEL_DIR=$family scripts/boot-vm.sh "$1"; }
# Boots $vmi through a mount of the local store STORE, once every identity
# is checked, and prints its row as POLICY (run $run).
boot_local() {
    local store=$1 policy=$2
    start_mount "$store" "s['startup_verification_done'] and s['identities_pending']==0"
    drop_caches
    t=$(boot "$mnt/$vmi")
    s=$(status)
    printf '%s\t%s\t%s\t%s\t-\t-\t-\t%s\t%s\t-\n' "$policy" "$run" "$t" "$ready" \
        "$(field bytes_from_store <<<"$s")" "$(field bytes_from_file <<<"$s")"
    stop_mount
}

printf 'policy\trun\tboot_s\tready_s\tfetched_B\tfetched_raw_B\tgets\tfrom_store_B\tfrom_file_B\tfallbacks\n'
for run in $(seq "$runs"); do
    drop_caches
    t=$(boot "$family/$vmi")
    printf 'plain\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\n' "$run" "$t"

    boot_local "$work/a" 'local store'

    # An empty node: its store is made from the remote's config.
    rm -rf "$work/b"
    start_mount "$work/b" "s.get('remote',{}).get('loads',0)>=1 and s['identities_pending']==0" \
        --remote "$remote"
    drop_caches
    t=$(boot "$mnt/$vmi")
    s=$(status)
    printf 'remote, empty node\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$t" "$ready" \
        "$(field remote.bytes_fetched <<<"$s")" "$(field remote.raw_bytes_fetched <<<"$s")" \
        "$(field remote.gets <<<"$s")" "$(field bytes_from_store <<<"$s")" \
        "$(field bytes_from_file <<<"$s")" "$(field remote.fallbacks <<<"$s")"
    until [ "$(status | field remote.boot_images_stored)" -ge 1 ]; do sleep 0.5; done
    stop_mount

    # The same node again, without --remote: the boot image is local now.
    boot_local "$work/b" 'same node, next boot'
done
echo "boot image of $vmi: $logical raw bytes, $alone compressed alone"
