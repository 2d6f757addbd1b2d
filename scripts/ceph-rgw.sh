#!/usr/bin/env bash
# A real single-node Ceph cluster with a RADOS Gateway (S3) on 127.0.0.1,
# for the remote tests and benchmarks: one mon, one memstore OSD, pool size
# 1, no systemd, no auth inside the cluster (it listens on loopback only).
#
#   scripts/ceph-rgw.sh start DIR [BUCKET...]  # prints `export AWS_...` lines
#   scripts/ceph-rgw.sh stop DIR
#
# Needs: apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common
# (scripts/setup.sh ceph installs them). Env: RGW_PORT (default 7480),
# MON_PORT (default 6789), OSD_BYTES (memstore size, default 2 GiB).
set -Eeuo pipefail
trap 'echo "ceph-rgw.sh: failed at line $LINENO (logs in ${dir:-?}/log)" >&2' ERR

cmd=${1:?usage: $0 start|stop DIR}
dir=$(realpath -m "${2:?usage: $0 start|stop DIR}")
rgw_port=${RGW_PORT:-7480}
mon_port=${MON_PORT:-6789}
osd_bytes=${OSD_BYTES:-$((2 << 30))}
access_key=yolo-test-access
secret_key=yolo-test-secret-0123456789
conf=$dir/ceph.conf

stop() {
    # The pids first: a daemon removes its pid file early in its shutdown,
    # while it still holds its ports, so the files cannot tell when it is gone.
    local pids=() rgw=()
    for pidfile in "$dir"/run/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile" 2>/dev/null || true)
        [ -n "$pid" ] || continue
        case $pidfile in
        *rgw*) rgw+=("$pid") ;; # it may ignore SIGTERM for minutes: SIGKILL
        *) pids+=("$pid") ;;
        esac
    done
    for pid in "${rgw[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 100); do
        alive=0
        for pid in "${pids[@]}" "${rgw[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -f "$dir"/run/*.pid
}

start() {
    for tool in ceph-mon ceph-osd radosgw radosgw-admin monmaptool; do
        command -v $tool >/dev/null || {
            echo "$tool is missing: run scripts/setup.sh ceph" >&2
            exit 1
        }
    done
    stop
    # A cluster just stopped may still hold its ports for a moment; another
    # one on the same ports would answer in place of ours.
    for port in "$mon_port" "$rgw_port"; do
        for _ in $(seq 50); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
            sleep 0.2
        done
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "port $port is in use: choose MON_PORT/RGW_PORT" >&2
            exit 1
        fi
    done
    rm -rf "$dir"
    mkdir -p "$dir"/{run,log,mon,osd}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
ms bind msgr2 = false
[mon]
mon data = $dir/mon/\$name
[osd]
osd data = $dir/osd/\$name
osd objectstore = memstore
memstore device bytes = $osd_bytes
osd max object name len = 460
osd max object namespace len = 64
# At start an OSD may send these crush updates before it knows the cluster's
# fsid, and then fails ("wrong fsid"): the script places it in the map.
osd class update on start = false
osd crush update on start = false
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $dir/rgw
rgw dns name = localhost
EOF
    ceph=(ceph -c "$conf" --connect-timeout 20)
    monmaptool --create --addv a "[v1:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a
    # The OSD's uuid is given to both sides, so it need not register itself.
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    "${ceph[@]}" osd create "$osd_uuid" 0 >/dev/null
    "${ceph[@]}" osd crush add osd.0 1.0 root=default >/dev/null 2>&1
    mkdir -p "$dir/osd/osd.0"
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
    ceph-osd -c "$conf" -i 0 2>>"$dir/log/osd.0.stderr"
    mkdir -p "$dir/rgw"
    for _ in $(seq 120); do
        "${ceph[@]}" osd stat 2>/dev/null | grep -q "1 up" && break
        sleep 0.5
    done
    radosgw -c "$conf" -n client.rgw
    for _ in $(seq 240); do
        curl -fs -o /dev/null "http://127.0.0.1:$rgw_port/" && break
        sleep 0.5
    done
    curl -fs -o /dev/null "http://127.0.0.1:$rgw_port/" || {
        echo "radosgw did not answer on 127.0.0.1:$rgw_port; logs in $dir/log" >&2
        exit 1
    }
    radosgw-admin -c "$conf" user create --uid=yolo --display-name=yolo \
        --access-key=$access_key --secret=$secret_key >/dev/null
    shift 2
    for bucket in "$@"; do
        # radosgw wants the payload hash header, which curl 7.88 omits.
        curl -fsS -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" \
            -H "x-amz-content-sha256: $(sha256sum </dev/null | cut -d' ' -f1)" \
            --user "$access_key:$secret_key" "http://127.0.0.1:$rgw_port/$bucket"
    done
    cat <<EOF
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT=http://127.0.0.1:$rgw_port
export AWS_ALLOW_HTTP=true
EOF
}

case $cmd in
start) start "$@" ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
