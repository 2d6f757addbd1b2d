#!/usr/bin/env bash
# Table II before and after handoff (benches/handoff.py): a VM's sequential
# and random backing reads, directly, through the mount, and after
# `yolo-store handoff`. Uses the demo's family and store (run
# scripts/demo.sh first); ROUNDS (default 3), RANDOM_READS (default 2000),
# VMI (default base.qcow2). The mount serves the family dir (this
# machine's disk; set IMAGES to a scripts/slow-disk.sh directory holding
# the family for an emulated disk).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo build --release -q
bin="$CARGO_TARGET_DIR/release/yolo-store"
images="${IMAGES:-/var/tmp/yolo-family}"
store="${DEMO_DIR:-/var/tmp/yolo-demo}/store"
work=/var/tmp/yolo-handoff
umount "$work/mnt" 2>/dev/null || true
rm -rf "$work"; mkdir -p "$work/mnt"
"$bin" --store "$store" mount --images "$images" "$work/mnt" 2> "$work/mount.log" &
trap 'umount "$work/mnt" 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -e "$work/mnt/.yolo-status" ] && break; sleep 0.1; done
until python3 -c "import json,sys; sys.exit(not json.load(open('$work/mnt/.yolo-status'))['startup_verification_done'])"; do sleep 0.2; done
benches/handoff.py "$bin" "$images" "$work/mnt" "${VMI:-base.qcow2}" "$work" "${ROUNDS:-3}" "${RANDOM_READS:-2000}" | tee "$work/handoff.csv"
python3 - "$work/handoff.csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for pattern in ["seq", "random"]:
    t = {arm: statistics.median(float(r["seconds"]) for r in rows if r["arm"] == arm and r["pattern"] == pattern)
         for arm in ["plain", "mount", "handoff"]}
    print(f"{pattern}: median seconds plain {t['plain']:.2f}, mount {t['mount']:.2f} ({t['mount'] / t['plain']:.2f}x), "
          f"after handoff {t['handoff']:.2f} ({t['handoff'] / t['plain']:.2f}x)")
PY
