#!/usr/bin/env bash
# The long form of tests/guests.rs (issue 13): two real TCG guests boot
# through the mount and read their second drive in a loop while the
# server is SIGKILLed and upgraded; then handoff and unmount. Prints each
# run's report: disruptions, the guests' longest read per disk (QEMU's
# read latency histogram), the supervisor's longest time without a server,
# the host reader's longest read, and seconds per pass through the mount
# and after handoff. A run with no disruption first, as the baseline of
# what a guest's read takes on this machine anyway.
#
#   benches/guest-kills.sh [ROUNDS] [KILLS] [UPGRADES] [READ_MIB] [PASSES]
#   (defaults 2 40 8 1024 4; root, fuse3, qemu-system-x86, the family)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
rounds="${1:-2}"
export YOLO_GUEST_READ_MIB="${4:-1024}" YOLO_GUEST_PASSES="${5:-4}"
cargo test --release --test guests --no-run -q 2>/dev/null
report() {
    cargo test --release -q --test guests -- --nocapture 2>&1 |
        grep -E 'kills and|longest read|supervisor:|per .* pass|test result|panicked'
}
echo "== baseline: no disruption, $YOLO_GUEST_READ_MIB MiB per pass"
YOLO_GUEST_KILLS=0 YOLO_GUEST_UPGRADES=0 report
for round in $(seq "$rounds"); do
    echo "== round $round: ${2:-40} kills, ${3:-8} upgrades, $YOLO_GUEST_READ_MIB MiB per pass"
    YOLO_GUEST_KILLS="${2:-40}" YOLO_GUEST_UPGRADES="${3:-8}" report
done
