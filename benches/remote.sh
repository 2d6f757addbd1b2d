#!/usr/bin/env bash
# Transfers through a real single-node Ceph radosgw on 127.0.0.1:
#  1. bytes moved pulling the fifth VMI of a family onto a node that holds
#     the other four, against the bytes unique to that VMI;
#  2. `pull` of the whole family into an empty store against a plain
#     parallel download of the same chunk objects (rclone, same number of
#     requests in flight), each run RUNS times in this one invocation;
#  3. `push` of the family to an empty prefix.
#
#   benches/remote.sh [BOOT_IMAGES_DIR]   (default: the demo's boot images)
#
# Needs scripts/setup.sh ceph, rclone, and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:-/var/tmp/yolo-demo/boot-images}
runs=${RUNS:-3}
jobs=${JOBS:-32}
Y=${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}/release/yolo-store
command -v rclone >/dev/null || apt-get install -y -q --no-install-recommends rclone >/dev/null
mapfile -t yolos < <(ls "$images"/*.yolo | sort)
[ ${#yolos[@]} -ge 5 ] || { echo "need 5 boot images in $images (run scripts/demo.sh)" >&2; exit 1; }
yolos=("${yolos[@]:0:5}")
fifth=$(basename "${yolos[4]}" .yolo)

work=$(mktemp -d /var/tmp/yolo-remote-bench.XXXXXX)
trap 'scripts/ceph-rgw.sh stop "$work/ceph" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
RGW_PORT=${RGW_PORT:-7490} MON_PORT=${MON_PORT:-6799} \
    scripts/ceph-rgw.sh start "$work/ceph" bench >"$work/env"
source "$work/env"
remote=s3://bench/family

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

echo "== family: ${yolos[*]##*/}"
"$Y" --store "$work/a" import "${yolos[@]}" | tail -1
t0=$(now)
"$Y" --store "$work/a" push --remote $remote --jobs "$jobs" --json >"$work/push.json"
t1=$(now)
objects=$(python3 -c "import json;print(json.load(open('$work/push.json'))['uploaded_chunks'])")
pushed=$(python3 -c "import json;print(json.load(open('$work/push.json'))['uploaded_bytes'])")
echo "push: $objects chunks, $pushed bytes in $(secs "$t0" "$t1") s"

echo "== fifth VMI ($fifth) onto a node holding the other four"
four=()
for y in "${yolos[@]:0:4}"; do four+=("$(basename "$y" .yolo)"); done
"$Y" --store "$work/b" pull --remote $remote "${four[@]}" >/dev/null
"$Y" --store "$work/b" pull --remote $remote "$fifth" --json >"$work/fifth.json"
"$Y" --store "$work/a" ls --json >"$work/ls.json"
python3 - "$work" "$fifth" <<'EOF'
import json, sys
work, fifth = sys.argv[1], sys.argv[2]
pull = json.load(open(f"{work}/fifth.json"))
vmi = next(v for v in json.load(open(f"{work}/ls.json")) if v["name"] == fifth)
moved = pull["downloaded_bytes"] + pull["manifest_bytes"]
print(f"unique to {fifth}: {vmi['unique_bytes']} raw bytes of {vmi['logical_bytes']} logical")
print(f"moved: {pull['downloaded_bytes']} chunk bytes ({pull['downloaded_chunks']} chunks, zstd) "
      f"+ {pull['manifest_bytes']} manifest bytes = {moved}")
print(f"not moved (already on the node): {pull['local_raw_bytes']} raw bytes in {pull['local_chunks']} chunks")
print(f"moved / unique raw = {moved / vmi['unique_bytes']:.2f}; moved / logical = {moved / vmi['logical_bytes']:.3f}")
EOF

echo "== whole family into an empty node: yolo-store pull vs rclone copy (--transfers $jobs), $runs runs each"
for i in $(seq "$runs"); do
    rm -rf "$work/c" "$work/dl"
    sync; echo 3 >/proc/sys/vm/drop_caches
    t0=$(now)
    "$Y" --store "$work/c" pull --remote $remote --jobs "$jobs" >/dev/null
    t1=$(now)
    # AWS_CA_BUNDLE (set on some machines) breaks rclone on plain HTTP.
    env -u AWS_CA_BUNDLE rclone copy ":s3:bench/family/chunks" "$work/dl" --s3-provider Ceph \
        --s3-endpoint "$AWS_ENDPOINT" --s3-access-key-id "$AWS_ACCESS_KEY_ID" \
        --s3-secret-access-key "$AWS_SECRET_ACCESS_KEY" --transfers "$jobs" \
        --checkers "$jobs" --no-check-dest --s3-no-head-object
    t2=$(now)
    got=$(find "$work/dl" -type f | wc -l)
    y=$(secs "$t0" "$t1"); r=$(secs "$t1" "$t2")
    echo "run $i: yolo-store pull $y s ($objects chunks + manifests, verified, stored), rclone $r s ($got objects to files); pull/rclone speed = $(echo "scale=2; $r / $y" | bc)x"
done
