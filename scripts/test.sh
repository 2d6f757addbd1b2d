#!/usr/bin/env bash
# The test command: formatting, lints, then every unit, property and
# integration test. Release profile only, so RocksDB's C++ build (10-14 min
# on 2 cores) is shared with the binary instead of done twice.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh qemu-utils ceph
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/yolo-store-target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
