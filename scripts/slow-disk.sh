#!/usr/bin/env bash
# An emulated slow disk: an ext4 filesystem on a loop device, throttled by
# the kernel's block I/O controller for the processes of one cgroup. The
# VMIs go there; the store stays on the fast disk (the paper's "dedicated
# fast device"). Every process that reads the VMIs (QEMU, the yolo-store
# daemon, a prefetcher, a contention load) runs in the group, so they share
# one device budget the way VMs share one disk.
#
#   scripts/slow-disk.sh up PROFILE DIR   make DIR a throttled disk (SIZE, default 8G)
#   scripts/slow-disk.sh run DIR -- CMD   run CMD (and its children) in DIR's group
#   scripts/slow-disk.sh join DIR PID...  move running processes (all their threads) there
#   scripts/slow-disk.sh stats DIR        the group's counters and read limits for the
#                                         device, as the kernel has them, one line:
#                                         reads=N read_bytes=B writes=N write_bytes=B
#                                         read_iops_limit=N read_bps_limit=B
#   scripts/slow-disk.sh down DIR         unmount, detach, remove the group and image
#
# Profiles (reads and writes alike):
#   hdd   150 IOPS, 150 MB/s: the paper's 10k rpm Seagate Savvio (Section
#         V-A gives 150 MB/s; ~150 random IOPS is what a 10k rpm disk does:
#         3 ms average rotational latency plus ~3.5 ms seek).
#   ssd   20000 IOPS, 346 MB/s: the paper's Toshiba PX02SS (346 MB/s, Section
#         V-A). The paper gives no IOPS; SAS SSDs of its class are rated at
#         about 100k random 4 KiB reads, more than this loop device does
#         unthrottled, so 20000 keeps the limit below what the host can serve.
#   ceph  600 IOPS, 500 MB/s: an RBD volume on the paper's Ceph (4 data nodes
#         of HDDs, 10 Gbit). Random reads land on the OSDs' disks: 4 x 150
#         IOPS. Streaming reads are spread over the 4 disks (4 x 150 MB/s)
#         less replication and RADOS overhead, under the 10 Gbit link's 1.25
#         GB/s; HP's published Ceph reference architecture measured 830 MB/s
#         of 256 KiB sequential reads on a much larger cluster, so 500 MB/s.
#         A throttle gives rates, not the network's latency.
#
# The loop device uses direct I/O on its backing file, so only the ext4 on
# top caches pages (the host's page cache of the paper). cgroup v1's blkio
# (/sys/fs/cgroup/blkio, blkio.throttle.*) is used where mounted, else
# cgroup v2's io.max. Needs root. `down` cleans up whatever a failed or
# partial `up` left; everything is named after DIR, so no state file.
set -euo pipefail

die() { echo "slow-disk: $*" >&2; exit 1; }
usage() { die "usage: $0 up PROFILE DIR | run DIR -- CMD... | join DIR PID... | stats DIR | down DIR"; }

profile_limits() { # PROFILE -> "IOPS BPS"
    case $1 in
    hdd) echo "150 150000000" ;;
    ssd) echo "20000 346000000" ;;
    ceph) echo "600 500000000" ;;
    *) die "unknown profile '$1' (hdd, ssd, ceph)" ;;
    esac
}

# Names derived from DIR's absolute path, so `down` finds them all again.
names() { # DIR
    dir=$(realpath -m "$1")
    local id
    id=$(printf '%s' "$dir" | sha1sum | cut -c1-10)
    image="${SLOW_DISK_IMAGES:-/var/tmp}/yolo-slow-disk-$id.img"
    group="yolo-slow-$id"
    if [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_iops_device ]; then
        cgv=1; cg=/sys/fs/cgroup/blkio/$group
    elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
        cgv=2; cg=/sys/fs/cgroup/$group
    else
        cgv=""; cg=""
    fi
}

need_root() { [ "$(id -u)" = 0 ] || die "needs root (loop devices, mounts, cgroups)"; }

loop_of() { losetup -j "$image" -O NAME -n 2>/dev/null | head -1; }

down() {
    local loop
    if mountpoint -q "$dir"; then
        umount "$dir" || umount -l "$dir"
    fi
    # The kernel may still be letting go of the device the unmount just
    # released (detach then fails with ENXIO while losetup -j still lists
    # it), so retry for a while and judge by what is left at the end.
    local tries=0
    while loop=$(loop_of) && [ -n "$loop" ] && [ $tries -lt 50 ]; do
        losetup -d "$loop" 2>/dev/null || sleep 0.1
        tries=$((tries + 1))
    done
    loop=$(loop_of)
    [ -z "$loop" ] || die "could not detach $loop from $image"
    if [ -n "$cg" ] && [ -d "$cg" ]; then
        # Processes still in the group go back to the root group first.
        local root=${cg%/*}
        while read -r pid; do echo "$pid" > "$root/cgroup.procs" 2>/dev/null || true; done < "$cg/cgroup.procs"
        rmdir "$cg"
    fi
    rm -f "$image"
}

up() { # PROFILE
    local limits iops bps
    limits=$(profile_limits "$1")
    read -r iops bps <<< "$limits"
    [ -n "$cgv" ] || die "no block I/O controller: neither cgroup v1 blkio (/sys/fs/cgroup/blkio) nor cgroup v2 io is available"
    [ -e /dev/loop-control ] || die "no loop devices (/dev/loop-control missing; modprobe loop)"
    [ ! -e "$image" ] || die "$dir is already a slow disk ($image exists); '$0 down $dir' first"
    local size=${SIZE:-8G} bytes free
    bytes=$(numfmt --from=iec "$size")
    mkdir -p "$(dirname "$image")"
    free=$(df -B1 --output=avail "$(dirname "$image")" | tail -1)
    # The image is sparse: a host disk that fills later turns into I/O errors
    # inside the ext4, so refuse up front.
    [ "$free" -gt "$bytes" ] ||
        die "not enough room for a $size disk in $(dirname "$image"): $((free >> 20)) MiB free (set SIZE or SLOW_DISK_IMAGES)"
    # From here on a failure (or die) undoes what was done.
    trap '[ "$?" = 0 ] || { echo "slow-disk: up failed; cleaning up" >&2; down; }' EXIT
    truncate -s "$size" "$image"
    # Inode tables and journal written now, not by a background thread
    # while a benchmark runs.
    mkfs.ext4 -q -F -L slow-disk -E lazy_itable_init=0,lazy_journal_init=0 "$image"
    local loop
    loop=$(losetup --find --show --direct-io=on "$image") ||
        die "could not attach a loop device (all busy? losetup -a)"
    mkdir -p "$dir"
    mount "$loop" "$dir"
    local majmin
    majmin=$(lsblk -dno MAJ:MIN "$loop" | tr -d ' ')
    mkdir -p "$cg"
    if [ "$cgv" = 1 ]; then
        for rw in read write; do
            echo "$majmin $iops" > "$cg/blkio.throttle.${rw}_iops_device"
            echo "$majmin $bps" > "$cg/blkio.throttle.${rw}_bps_device"
        done
    else
        grep -qw io "${cg%/*}/cgroup.subtree_control" || echo +io > "${cg%/*}/cgroup.subtree_control"
        echo "$majmin riops=$iops wiops=$iops rbps=$bps wbps=$bps" > "$cg/io.max"
    fi
    echo "slow-disk: $dir on $loop ($majmin), profile $1: $iops IOPS, $((bps / 1000000)) MB/s, for the processes of $cg"
}

stats() {
    local loop majmin
    loop=$(loop_of)
    [ -n "$loop" ] && [ -d "$cg" ] || die "$dir is not a slow disk ('$0 up PROFILE $dir')"
    majmin=$(lsblk -dno MAJ:MIN "$loop" | tr -d ' ')
    if [ "$cgv" = 1 ]; then
        awk -v d="$majmin" '
            FILENAME ~ /io_serviced$/ && $1 == d { n[$2] = $3 }
            FILENAME ~ /io_service_bytes$/ && $1 == d { b[$2] = $3 }
            FILENAME ~ /read_iops_device$/ && $1 == d { iops = $2 }
            FILENAME ~ /read_bps_device$/ && $1 == d { bps = $2 }
            END { printf "reads=%.0f read_bytes=%.0f writes=%.0f write_bytes=%.0f read_iops_limit=%.0f read_bps_limit=%.0f\n",
                  n["Read"], b["Read"], n["Write"], b["Write"], iops, bps }
        ' "$cg/blkio.throttle.io_serviced" "$cg/blkio.throttle.io_service_bytes" \
            "$cg/blkio.throttle.read_iops_device" "$cg/blkio.throttle.read_bps_device"
    else
        awk -v d="$majmin" '$1 == d { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[FILENAME kv[1]] = kv[2] } }
            END { s = ARGV[1]; m = ARGV[2]
                  printf "reads=%.0f read_bytes=%.0f writes=%.0f write_bytes=%.0f read_iops_limit=%.0f read_bps_limit=%.0f\n",
                  v[s "rios"], v[s "rbytes"], v[s "wios"], v[s "wbytes"], v[m "riops"], v[m "rbps"] }
        ' "$cg/io.stat" "$cg/io.max"
    fi
}

[ $# -ge 2 ] || usage
verb=$1; shift
case $verb in
up)
    [ $# -eq 2 ] || usage
    need_root; names "$2"; up "$1" ;;
down)
    [ $# -eq 1 ] || usage
    need_root; names "$1"; down ;;
stats)
    [ $# -eq 1 ] || usage
    names "$1"; stats ;;
run)
    [ $# -ge 3 ] && [ "$2" = -- ] || usage
    need_root; names "$1"; shift 2
    [ -n "$cg" ] && [ -d "$cg" ] || die "$dir is not a slow disk ('$0 up PROFILE $dir')"
    echo "$BASHPID" > "$cg/cgroup.procs"
    exec "$@" ;;
join)
    [ $# -ge 2 ] || usage
    need_root; names "$1"; shift
    [ -n "$cg" ] && [ -d "$cg" ] || die "$dir is not a slow disk ('$0 up PROFILE $dir')"
    # cgroup.procs moves the whole thread group (v1 and v2).
    for pid in "$@"; do
        echo "$pid" > "$cg/cgroup.procs" || die "could not move process $pid into $cg"
    done ;;
*) usage ;;
esac
