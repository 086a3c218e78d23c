#!/usr/bin/env bash
# Installs the real components the tests and the demo run: HAProxy from Debian (bookworm),
# Consul 1.8.7 from Debian's bullseye archive (bookworm has no consul package), nginx (the
# real reverse proxy the template tests supervise; Debian's plain `nginx` package is the
# lightest one with the upstream and proxy modules built in: `nginx-light` is `nginx` plus
# an extra module), and the small tools the tests and benchmarks use. Idempotent: a second
# run changes nothing.
#
# Consul is unpacked, not installed: `dpkg -x` into .deps/consul keeps the machine's
# apt state clean and lets the project pin exactly one build. The .deb must match the
# checksum below whether it came from the archive or from ../shared/vendor/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.deps"
consul_deb="consul_1.8.7+dfsg1-2+b3_amd64.deb"
consul_sha256="e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9"
vendor="$root/../shared/vendor/$consul_deb"
apt_packages=(haproxy nginx python3-venv tini supervisor wrk iproute2 util-linux curl)

log() { printf 'install-system-deps: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing_packages() {
    local p
    for p in "${apt_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

install_apt_packages() {
    local missing
    missing=$(missing_packages)
    [ -z "$missing" ] && return 0
    log "apt-get install $(echo $missing)"
    as_root apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # Debian's packages start their services; ours run under basenode, not under init.
    as_root sh -c 'for s in haproxy nginx supervisor; do service "$s" stop >/dev/null 2>&1 || true; done'
}

sha_ok() { echo "$consul_sha256  $1" | sha256sum --check --status; }

fetch_consul_deb() {
    # Ask Debian's archive first: a one-off source list for bullseye, used for this
    # download only, so the machine's own apt configuration is untouched.
    local tmp lists
    tmp=$(mktemp -d)
    lists="$tmp/lists"
    mkdir -p "$lists/partial"
    cat >"$tmp/bullseye.list" <<LIST
deb http://deb.debian.org/debian bullseye main
LIST
    local opts=(-o "Dir::Etc::SourceList=$tmp/bullseye.list" -o "Dir::Etc::SourceParts=/dev/null"
                -o "Dir::State::Lists=$lists" -o "APT::Architecture=amd64" -qq)
    if apt-get "${opts[@]}" update >/dev/null 2>&1 &&
       (cd "$tmp" && apt-get "${opts[@]}" download "consul=1.8.7+dfsg1-2+b3" >/dev/null 2>&1) &&
       sha_ok "$tmp/$consul_deb"; then
        mv "$tmp/$consul_deb" "$deps/$consul_deb"
        log "consul: downloaded from Debian's bullseye archive, checksum verified"
    elif [ -f "$vendor" ] && sha_ok "$vendor"; then
        cp "$vendor" "$deps/$consul_deb"
        log "consul: archive unavailable, using ../shared/vendor/$consul_deb (checksum verified)"
    else
        rm -rf "$tmp"
        log "consul: neither Debian's archive nor ../shared/vendor/ gave $consul_deb with sha256 $consul_sha256"
        exit 1
    fi
    rm -rf "$tmp"
}

install_consul() {
    if [ -x "$deps/bin/consul" ] && "$deps/bin/consul" version 2>/dev/null | grep -q 'v1.8.7'; then
        return 0
    fi
    mkdir -p "$deps/bin"
    [ -f "$deps/$consul_deb" ] && sha_ok "$deps/$consul_deb" || fetch_consul_deb
    rm -rf "$deps/consul"
    dpkg -x "$deps/$consul_deb" "$deps/consul"
    ln -sf "$deps/consul/usr/bin/consul" "$deps/bin/consul"
    log "consul: $("$deps/bin/consul" version | head -n 1) at .deps/bin/consul"
}

install_apt_packages
install_consul
