#!/usr/bin/env bash
# Installs what building and testing yolo-store needs on Debian 12, once.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

# Arguments add packages; `ceph` stands for a single-node Ceph with its
# object gateway (the remote tests, scripts/ceph-rgw.sh); `promtool` for
# Prometheus' checker of /metrics (tests/metrics.rs).
packages=(clang libclang-dev fuse3 zstd)
want_promtool=""
for arg in "$@"; do
    case $arg in
    ceph) packages+=(ceph-mon ceph-osd radosgw ceph-common curl) ;;
    promtool) want_promtool=1 ;;
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
# promtool ships only in Debian's `prometheus` package, whose install adds
# a system user, a dozen JavaScript packages and a service it starts. Take
# the one static binary out of the .deb instead (19 MB fetched, ~5 s).
if [ -n "$want_promtool" ] && ! command -v promtool >/dev/null; then
    deb_dir=$(mktemp -d)
    chmod 0777 "$deb_dir" # apt's download user writes there
    (cd "$deb_dir" && { apt-get download -q prometheus 2>/dev/null ||
        { $sudo_cmd apt-get update -q && apt-get download -q prometheus; }; })
    dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"$deb_dir/promtool"
    $sudo_cmd install -m 0755 "$deb_dir/promtool" /usr/local/bin/promtool
    rm -rf "$deb_dir"
    promtool --version | head -1
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
