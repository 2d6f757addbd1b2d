#!/usr/bin/env bash
# Installs what building and testing yolo-store needs on Debian 12, once.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

# Arguments add packages; `ceph` stands for a single-node Ceph with its
# object gateway (the remote tests, scripts/ceph-rgw.sh).
packages=(clang libclang-dev fuse3 zstd)
for arg in "$@"; do
    case $arg in
    ceph) packages+=(ceph-mon ceph-osd radosgw ceph-common curl) ;;
    *) packages+=("$arg") ;;
    esac
done
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $sudo_cmd apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Installing qemu-system-x86 removes a newer qemu-utils: put qemu-img back.
if [[ " ${packages[*]} " == *" qemu-utils "* ]] && ! command -v qemu-img >/dev/null; then
    DEBIAN_FRONTEND=noninteractive ${sudo_cmd:-} apt-get install -y -q --no-install-recommends qemu-utils
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
