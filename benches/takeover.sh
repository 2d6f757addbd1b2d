#!/usr/bin/env bash
# The longest stall a reader sees while the mount's server is SIGKILLed or
# upgraded (issue 13): runs the takeover tests one at a time, alone, and
# prints each one's longest single read. Two readers (O_DIRECT, and
# buffered with the page cache dropped) read a 560 KiB VMI with a boot image
# and a 3 MiB one without, whole, in a loop, in reads of 4 KiB to 256 KiB;
# a read that is not caught in a takeover takes well under a millisecond
# to a few, so the longest one is the takeover's stall.
#
#   benches/takeover.sh [ROUNDS]     (root; fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
rounds="${1:-3}"
cargo test --release --test takeover --no-run -q 2>/dev/null
for test in readers_see_exact_bytes_while_the_server_is_killed_twelve_times \
    servers_killed_as_soon_as_they_take_over_lose_no_request \
    an_upgrade_runs_the_new_binary_and_readers_see_exact_bytes; do
    for _ in $(seq "$rounds"); do
        cargo test --release -q --test takeover -- --exact "$test" --nocapture 2>&1 |
            grep -E 'longest single read|took over'
    done
done
