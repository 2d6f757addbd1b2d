#!/usr/bin/env bash
# Transfers through a real single-node Ceph radosgw on 127.0.0.1, with every
# byte between yolo-store and the gateway counted on the wire: iptables
# counters on the gateway's TCP port on lo (IP packets both ways, headers,
# requests, listings and acks included). lo's own counters are printed too,
# but they also carry radosgw's traffic to its OSD and other processes'.
#  1. `push` of the family to an empty prefix;
#  2. pulling the fifth VMI of a family onto a node that holds the other
#     four (index cache warm from that node's earlier pull, and cold);
#  3. `pull` of the whole family into an empty store, RUNS times, with
#     objects/s and MB/s on the wire.
# With V1=/path/to/an-older-yolo-store (layout 1: one object per chunk), the
# same steps run with it first, against its own prefix, in this invocation.
#
#   benches/remote.sh [BOOT_IMAGES_DIR]   (default: the demo's boot images)
#
# Needs scripts/setup.sh ceph, iptables, and a release build; rclone, if
# installed, is timed copying the same pack objects.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-/var/tmp/yolo-demo/boot-images}
runs=${RUNS:-3}
jobs=${JOBS:-32}
Y=${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}/release/yolo-store
V1=${V1:-}
command -v iptables >/dev/null || apt-get install -y -q --no-install-recommends iptables >/dev/null
mapfile -t yolos < <(ls "$images"/*.yolo | sort)
[ ${#yolos[@]} -ge 5 ] || { echo "need 5 boot images in $images (run scripts/demo.sh)" >&2; exit 1; }
yolos=("${yolos[@]:0:5}")
fifth=$(basename "${yolos[4]}" .yolo)
four=()
for y in "${yolos[@]:0:4}"; do four+=("$(basename "$y" .yolo)"); done
rgw_port=${RGW_PORT:-7490}
chain=yolo_wire_$rgw_port

work=$(mktemp -d /var/tmp/yolo-remote-bench.XXXXXX)
cleanup() {
    iptables -D INPUT -i lo -j "$chain" 2>/dev/null || true
    iptables -F "$chain" 2>/dev/null || true
    iptables -X "$chain" 2>/dev/null || true
    scripts/ceph-rgw.sh stop "$work/ceph" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
RGW_PORT=$rgw_port MON_PORT=${MON_PORT:-6799} \
    scripts/ceph-rgw.sh start "$work/ceph" bench >"$work/env"
source "$work/env"
# On lo every packet passes INPUT once: one rule per direction.
iptables -N "$chain"
iptables -A "$chain" -p tcp --dport "$rgw_port" -j RETURN
iptables -A "$chain" -p tcp --sport "$rgw_port" -j RETURN
iptables -I INPUT -i lo -j "$chain"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
wire() { iptables -nvxL "$chain" | awk 'NR > 2 { b += $2 } END { print b + 0 }'; }
lo() { cat /sys/class/net/lo/statistics/tx_bytes; }
field() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(sum(d.get(k,0) for k in sys.argv[2:]))" "$@"; }
# Runs "$@", printing nothing; sets $took (s), $moved (wire bytes), $lomoved.
measure() {
    local w0 l0 t0 t1
    w0=$(wire); l0=$(lo); t0=$(now)
    "$@"
    t1=$(now)
    took=$(secs "$t0" "$t1"); moved=$(( $(wire) - w0 )); lomoved=$(( $(lo) - l0 ))
}

echo "== family: ${yolos[*]##*/}; wire = bytes to and from radosgw's port (iptables on lo)"
"$Y" --store "$work/a" import "${yolos[@]}" | tail -1
"$Y" --store "$work/a" ls --json >"$work/ls.json"

layouts=(v2)
[ -n "$V1" ] && layouts=(v1 v2)
for layout in "${layouts[@]}"; do
    bin=$Y
    [ "$layout" = v1 ] && bin=$V1
    remote=s3://bench/$layout
    echo
    echo "== layout $layout ($bin)"
    measure "$bin" --store "$work/a" push --remote "$remote" --jobs "$jobs" --json >"$work/push-$layout.json"
    echo "push: $(field "$work/push-$layout.json" uploaded_chunks) chunks, $(field "$work/push-$layout.json" uploaded_bytes) chunk bytes in $took s; wire $moved bytes"

    echo "-- fifth VMI ($fifth) onto a node holding the other four"
    "$bin" --store "$work/b-$layout" pull --remote "$remote" "${four[@]}" >/dev/null
    measure "$bin" --store "$work/b-$layout" pull --remote "$remote" "$fifth" --json >"$work/fifth-$layout.json"
    warm=$moved
    python3 - "$work/fifth-$layout.json" "$work/ls.json" "$fifth" "$moved" "$lomoved" <<'EOF'
import json, sys
pull = json.load(open(sys.argv[1]))
vmi = next(v for v in json.load(open(sys.argv[2])) if v["name"] == sys.argv[3])
wire, lo = int(sys.argv[4]), int(sys.argv[5])
need = pull.get("needed_bytes", pull["downloaded_bytes"])
print(f"unique to {sys.argv[3]}: {vmi['unique_bytes']} raw bytes of {vmi['logical_bytes']} logical; "
      f"{pull['downloaded_chunks']} chunks, {need} bytes compressed")
print(f"report: {pull['downloaded_bytes']} pack/chunk bytes, {pull['manifest_bytes']} manifest, "
      f"{pull.get('index_bytes', 0)} index; {pull.get('pack_gets', 0)} pack + {pull.get('range_gets', 0)} range GETs")
print(f"wire: {wire} bytes = {wire / need:.2f}x its compressed unique chunks (lo counter: {lo})")
EOF
    if [ "$layout" = v2 ]; then
        "$bin" --store "$work/b2-$layout" pull --remote "$remote" "${four[@]}" >/dev/null
        rm -rf "$work/b2-$layout/remote-index"
        measure "$bin" --store "$work/b2-$layout" pull --remote "$remote" "$fifth" --json >/dev/null
        echo "same, index cache emptied first: wire $moved bytes ($(echo "scale=2; $moved / $warm" | bc)x the warm pull)"
    fi

    echo "-- whole family into an empty node (--jobs $jobs), $runs runs"
    for i in $(seq "$runs"); do
        rm -rf "$work/c"
        sync; echo 3 >/proc/sys/vm/drop_caches
        measure "$bin" --store "$work/c" pull --remote "$remote" --jobs "$jobs" --json >"$work/full.json"
        # Objects read: chunks (v1) or pack and range GETs (v2), manifests,
        # index objects (listings, the config and locks not counted).
        if [ "$layout" = v1 ]; then
            objects=$(( $(field "$work/full.json" downloaded_chunks) + 5 ))
        else
            objects=$(( $(field "$work/full.json" pack_gets range_gets) + 5 + 1 ))
        fi
        echo "run $i: $took s, $objects objects ($(echo "scale=0; $objects / $took" | bc) objects/s), wire $moved bytes ($(echo "scale=2; $moved / $took / 1000000" | bc) MB/s); lo $lomoved"
        if [ "$layout" = v2 ] && command -v rclone >/dev/null; then
            # The same pack objects, plainly downloaded to files: what the
            # gateway serves at this concurrency, with no checking or store.
            rm -rf "$work/dl"
            # AWS_CA_BUNDLE (set on some machines) breaks rclone on plain HTTP.
            measure env -u AWS_CA_BUNDLE rclone copy ":s3:bench/v2/packs" "$work/dl" \
                --s3-provider Ceph --s3-endpoint "$AWS_ENDPOINT" \
                --s3-access-key-id "$AWS_ACCESS_KEY_ID" --s3-secret-access-key "$AWS_SECRET_ACCESS_KEY" \
                --transfers "$jobs" --checkers "$jobs" --no-check-dest --s3-no-head-object
            echo "       rclone copy of the $(find "$work/dl" -type f | wc -l) pack objects: $took s, wire $moved bytes ($(echo "scale=2; $moved / $took / 1000000" | bc) MB/s)"
        fi
    done
done
