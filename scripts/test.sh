#!/usr/bin/env bash
# The test command: formatting, lints, then every unit, property and
# integration test. Release profile only, so RocksDB's C++ build (10-14 min
# on 2 cores) is shared with the binary instead of done twice.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh qemu-utils qemu-system-x86 ceph promtool python3 b3sum  # python3, b3sum: benches/fleet.py in tests/fleet.rs; qemu-system-x86: tests/handoff.rs, tests/guests.rs
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace

# The fuzzers, short form: one minute each from the committed corpus (new
# finds go to a scratch directory). docs/reliability.md has the long runs.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Every target format/fuzz lists (six: .yolo, trace, pack, chunk codec,
# remote index and manifest objects).
for target in $(cargo fuzz list --fuzz-dir format/fuzz); do
    mkdir -p "$scratch/$target"
    RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" \
        cargo fuzz run --fuzz-dir format/fuzz -O "$target" "$scratch/$target" \
        "format/fuzz/corpus/$target" -- -max_total_time=60 -max_len=65536 -rss_limit_mb=2048
done
