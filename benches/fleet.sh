#!/usr/bin/env bash
# Fleet scale: how each cost of yolo-store grows with the number of VMIs.
#
#   benches/fleet.sh            # N = 10 100 1000, as root (FUSE mounts)
#   NS="10 100" benches/fleet.sh
#
# Generates the 1000-VMI fleet once (benches/fleet.py, Table I's families,
# boot images scaled by SCALE=8) under $WORK, then for each N imports the
# first VMIs of each family into a fresh store and measures import, du,
# ls, stats, verify, mount start (first and restarted), daemon RSS, cache-hit
# read latency, rm of 10% + gc, and the import of 10 more VMIs, one at a
# time, into the store that then holds 0.9 N (the marginal cost of a VMI). Writes $WORK/fleet.csv and, with
# python3-matplotlib, docs/figures/fleet.png. Every read through the mount
# is compared with the boot image (benches/fleet-read.py). Needs python3,
# b3sum, /usr/bin/time (Debian: time) and, for the plot, python3-matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${NS:-10 100 1000}
WORK=${WORK:-/var/tmp/fleet}
SCALE=${SCALE:-8}
BATCH=${BATCH:-10}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/yolo-store}
POOL=${POOL:-$WORK/pool}
GEN=$WORK/gen
MNT=$WORK/mnt
CSV=${CSV:-$WORK/fleet.csv}
[ -x "$BIN" ] || cargo build --release
if ! ls "$POOL"/*.yolo >/dev/null 2>&1; then
	mkdir -p "$POOL"
	cp /var/tmp/yolo-demo/boot-images/*.yolo "$POOL"/ ||
		{ echo "no boot images in $POOL: run scripts/demo.sh first" >&2; exit 1; }
fi
max=0
for n in $NS; do [ "$n" -gt "$max" ] && max=$n; done
t0=$(date +%s%N)
python3 benches/fleet.py --n "$max" --out "$GEN" --pool "$POOL" --scale "$SCALE"
echo "generated $max VMIs in $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2

now() { date +%s%N; }
# seconds since $1 (ns), 3 decimals
since() { local d=$(( $(now) - $1 )); printf '%d.%03d' $((d / 1000000000)) $(( (d / 1000000) % 1000 )); }
timed() { local t; t=$(now); "$@" >/dev/null; since "$t"; }
# CPU seconds (user + sys) of one run
cpu_of() { /usr/bin/time -f "%U %S" "$@" 2>&1 >/dev/null | awk 'END {printf "%.2f", $1 + $2}'; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
cache_mb() { python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["cache"]["bytes"]/2**20,1))' "$MNT/.yolo-status"; }
MPID=
stop_mount() {
	if [ -n "$MPID" ]; then
		umount "$MNT" 2>/dev/null || true
		wait "$MPID" 2>/dev/null || true
		MPID=
	fi
}
trap stop_mount EXIT
# Starts the mount; READY = seconds until every boot image is usable.
start_mount() {
	local n=$1 t
	mkdir -p "$MNT"
	t=$(now)
	"$BIN" --store "$STORE" mount --images "$GEN/images" "$MNT" --cache-size 1G >>"$WORK/mount.log" 2>&1 &
	MPID=$!
	# One poller, reading the status file every 10 ms.
	python3 - "$MNT/.yolo-status" "$n" "$MPID" <<-'EOF'
		import json, os, sys, time
		path, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
		while True:
		    try:
		        s = json.load(open(path))
		        if s["startup_verification_done"] and s["boot_images_verified"] >= n:
		            break
		    except (OSError, ValueError):
		        os.kill(pid, 0)  # the mount died: ProcessLookupError
		    time.sleep(0.01)
	EOF
	READY=$(since "$t")
}

echo "n,boot_bytes,import_s,import_ms_per_vmi,import_mb_s,store_du_bytes,pack_bytes,du_over_packs,dedup_on_disk,ls_s,stats_s,verify_s,mount_first_s,mount_restart_s,rss_idle_mb,rss_idle_restart_mb,rss_served_mb,cache_mb,hit_p50_us,hit_p99_us,import_rm_set_s,rm_s,gc_s,verify_after_gc_s,probe_import_ms_per_vmi,import_cpu_ms_per_vmi,probe_import_cpu_ms_per_vmi,ls_cpu_s,stats_cpu_s" >"$CSV"
for n in $NS; do
	STORE=$WORK/store-$n
	rm -rf "$STORE"
	mapfile -t names < <(python3 benches/fleet.py --list "$n")
	mapfile -t probes < <(python3 benches/fleet.py --list-probes)
	# 10% to remove later: every 10th VMI, so every family loses some; they
	# are imported last, alone, to compare gc with their import.
	keep=() gone=()
	for i in "${!names[@]}"; do
		if (( i % 10 == 9 )); then gone+=("$GEN/yolo/${names[$i]}.yolo"); else keep+=("$GEN/yolo/${names[$i]}.yolo"); fi
	done
	boot=$(cat "${keep[@]}" "${gone[@]}" | wc -c)
	# CPU seconds (user + sys) too: on a shared machine, wall time measures
	# the other tenants as much as the import.
	cpu=$WORK/import-cpu.txt
	: >"$cpu"
	t=$(now)
	for ((i = 0; i < ${#keep[@]}; i += BATCH)); do
		/usr/bin/time -a -o "$cpu" -f "%U %S" "$BIN" --store "$STORE" import "${keep[@]:i:BATCH}" >/dev/null
	done
	t_keep=$(( $(now) - t ))
	t=$(now)
	[ ${#gone[@]} -eq 0 ] || /usr/bin/time -a -o "$cpu" -f "%U %S" "$BIN" --store "$STORE" import "${gone[@]}" >/dev/null
	import_cpu_ms=$(awk -v n="$n" '{s += $1 + $2} END {printf "%.1f", s*1000/n}' "$cpu")
	t_gone=$(( $(now) - t ))
	import_s=$(awk -v a="$t_keep" -v b="$t_gone" 'BEGIN {printf "%.3f", (a+b)/1e9}')
	import_rm_set_s=$(awk -v b="$t_gone" 'BEGIN {printf "%.3f", b/1e9}')
	du=$(du -sb "$STORE" | cut -f1)
	packs=$("$BIN" --store "$STORE" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["stored_bytes"])')
	ls_s=$(timed "$BIN" --store "$STORE" ls)
	stats_s=$(timed "$BIN" --store "$STORE" stats)
	verify_s=$(timed "$BIN" --store "$STORE" verify)
	ls_cpu=$(cpu_of "$BIN" --store "$STORE" ls)
	stats_cpu=$(cpu_of "$BIN" --store "$STORE" stats)

	# 50 VMIs to serve, spread over the families.
	serve=()
	step=$(( ${#keep[@]} / 50 )); [ "$step" -ge 1 ] || step=1
	for ((i = 0; i < ${#keep[@]} && ${#serve[@]} < 50; i += step)); do serve+=("${keep[$i]}"); done
	start_mount "$n"
	first=$READY
	sleep 1
	rss_idle=$(rss_mb "$MPID")
	hits=$(python3 benches/fleet-read.py "$MNT" "${serve[@]}" --hits 20)
	rss_served=$(rss_mb "$MPID")
	cache=$(cache_mb)
	stop_mount
	start_mount "$n"
	restart=$READY
	sleep 1
	rss_idle_restart=$(rss_mb "$MPID")
	python3 benches/fleet-read.py "$MNT" "${serve[@]:0:5}" >/dev/null
	stop_mount

	rm_names=()
	for g in "${gone[@]}"; do rm_names+=("$(basename "$g" .yolo)"); done
	rm_s=0 gc_s=0
	if [ ${#rm_names[@]} -gt 0 ]; then
		rm_s=$(timed "$BIN" --store "$STORE" rm "${rm_names[@]}")
		gc_s=$(timed "$BIN" --store "$STORE" gc)
	fi
	verify2_s=$(timed "$BIN" --store "$STORE" verify)
	# One more VMI: the 10 probes (Table I's mix, in no fleet) imported into
	# this store of 0.9 N VMIs, one import each.
	t=$(now)
	: >"$cpu"
	for p in "${probes[@]}"; do /usr/bin/time -a -o "$cpu" -f "%U %S" "$BIN" --store "$STORE" import "$GEN/yolo/$p.yolo" >/dev/null; done
	probe_ms=$(awk -v d="$(( $(now) - t ))" 'BEGIN {printf "%.1f", d/1e6/10}')
	probe_cpu_ms=$(awk '{s += $1 + $2} END {printf "%.1f", s*1000/10}' "$cpu")
	p50=$(echo "$hits" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p50_us"])')
	p99=$(echo "$hits" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99_us"])')
	row=$(awk -v n="$n" -v boot="$boot" -v imp="$import_s" -v du="$du" -v packs="$packs" 'BEGIN {
		printf "%d,%.0f,%s,%.1f,%.1f,%.0f,%.0f,%.3f,%.2f", n, boot, imp, imp*1000/n, boot/1e6/imp, du, packs, du/packs, boot/du }')
	echo "$row,$ls_s,$stats_s,$verify_s,$first,$restart,$rss_idle,$rss_idle_restart,$rss_served,$cache,$p50,$p99,$import_rm_set_s,$rm_s,$gc_s,$verify2_s,$probe_ms,$import_cpu_ms,$probe_cpu_ms,$ls_cpu,$stats_cpu" | tee -a "$CSV"
done
column -s, -t "$CSV" >&2 || true
# Debian's python3-matplotlib is for /usr/bin/python3, which need not be
# the python3 on PATH.
for py in /usr/bin/python3 python3; do
	if "$py" -c 'import matplotlib' 2>/dev/null; then
		"$py" benches/fleet-plot.py "$CSV" docs/figures/fleet.png
		break
	fi
done
