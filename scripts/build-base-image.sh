#!/usr/bin/env bash
# Builds a local stand-in for a Debian base image from Debian's own packages and tags it
# with the exact name a Dockerfile's FROM uses (default: debian:bookworm-slim).
#
# Why: this machine has a Docker engine but no registry, so `FROM debian:bookworm-slim`
# cannot be pulled. A user with a registry pulls the real image; here the same tag
# points at a rootfs made by debootstrap, trimmed the way Debian's "slim" images are
# (no docs, man pages or locales), so the project's Dockerfile is built unchanged.
#
# Usage: scripts/build-base-image.sh [SUITE [TAG [PACKAGES]]]
#   e.g. bullseye debian:bullseye-slim, or bullseye basenode-test/bullseye-python3 python3
#   PACKAGES (comma list) are added to the rootfs: only for test images with an honest tag,
#   never under a debian:* name (a real user's debian image would not have them).
# Idempotent: when TAG already exists (ours or a real pulled one) nothing is done;
# BASENODE_REBUILD_BASE=1 forces a rebuild.
set -euo pipefail

suite=${1:-bookworm}
tag=${2:-debian:$suite-slim}
include=${3:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

log() { printf 'build-base-image: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if [ "${BASENODE_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    log "$tag exists, nothing to do"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/basenode-rootfs.XXXXXX")
# The rootfs is owned by root and has device nodes: remove it as root.
trap 'as_root rm -rf "$work"' EXIT
rootfs="$work/rootfs"

log "debootstrap --variant=minbase $suite ${include:+(+ $include) }from $mirror (about half a minute)"
as_root debootstrap --variant=minbase ${include:+--include="$include"} "$suite" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
}

# The same apt sources a real debian:<suite>-slim image has, so that a Dockerfile's
# `apt-get install` sees the same package versions (security updates included).
security_suite="$suite-security"
as_root tee "$rootfs/etc/apt/sources.list" >/dev/null <<LIST
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $security_suite main
LIST

# Slim, as Debian's docker images are: dpkg skips docs, man pages and locales from now
# on, and apt keeps no package cache in image layers.
as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/basenode-slim" >/dev/null <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
as_root tee "$rootfs/etc/apt/apt.conf.d/basenode-slim" >/dev/null <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
CFG
as_root sh -c '
    cd "$1"
    rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* var/log/*.log \
        var/log/apt/* var/cache/debconf/*-old
    find usr/share/doc -mindepth 2 -not -name copyright -not -type d -delete
    find usr/share/doc -mindepth 1 -type d -empty -delete
    rm -rf usr/share/man/* usr/share/info/* usr/share/lintian/*
    find usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    : >etc/hostname
    rm -f etc/resolv.conf
' sh "$rootfs"

log "importing as $tag"
as_root tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'CMD ["bash"]' \
    --change "LABEL org.basenode.base=debootstrap-$suite${include:++$include}" \
    --message "debootstrap --variant=minbase $suite, slimmed by scripts/build-base-image.sh" \
    - "$tag" >/dev/null
log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
