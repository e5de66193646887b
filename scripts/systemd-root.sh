#!/usr/bin/env bash
#
# scripts/systemd-root.sh - a minimal Debian root, prepared once and cached, for the
# tests that need a real systemd (tests/systemd.rs) or an image-like root filesystem
# (tests/pod.rs).
#
# Usage: scripts/systemd-root.sh prepare     build $ROOT unless it is current
#        scripts/systemd-root.sh path        print $ROOT
#        scripts/systemd-root.sh copy DEST   copy $ROOT to DEST (one file system only)
#
# ROOT=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}/systemd-root
#
# The root is `debootstrap --variant=minbase` of Debian bookworm with systemd as init
# and the libraries the PostgreSQL 18 client of the test bed links against; like
# debian:bookworm-slim it has no CA certificates and no PostgreSQL client. A stamp
# file records the package list: a change rebuilds the root. Needs root, debootstrap
# and a Debian mirror (LEAFLOCK_TESTBED_MIRROR, default deb.debian.org).
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_PREFIX=systemd-root
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

TESTBED=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}
ROOT=$TESTBED/systemd-root
MIRROR=${LEAFLOCK_TESTBED_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,libssl3,libzstd1,liblz4-1,zlib1g,libgssapi-krb5-2,libicu72,libxml2,libreadline8,libossp-uuid16
STAMP="debootstrap minbase $SUITE $INCLUDE v1"

# unmount_under DIR: unmount everything mounted below DIR (deepest first).
# debootstrap can leave /proc (and more) mounted in the target.
unmount_under() {
    local dir
    dir=$(realpath "$1")
    awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

cmd_prepare() {
    if [[ -f $ROOT/.leaflock-stamp && $(cat "$ROOT/.leaflock-stamp") == "$STAMP" ]]; then
        # / must be traversable by every user (mktemp made it 0700 before).
        chmod 755 "$ROOT"
        log "present in $ROOT"
        return
    fi
    ((EUID == 0)) || die "building the root needs root"
    have debootstrap || die "debootstrap not found: run 'scripts/testbed.sh install'"
    local t0 tmp
    t0=$(now_ms)
    mkdir -p "$TESTBED"
    tmp=$(mktemp -d "$TESTBED/systemd-root.XXXXXX")
    # The root directory of the machine: mktemp makes it 0700, which no dynamic user
    # could traverse.
    chmod 755 "$tmp"
    log "debootstrap $SUITE into $tmp"
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR" \
        >"$tmp.log" 2>&1; then
        unmount_under "$tmp"
        show_log_tail "$tmp.log"
        rm -rf --one-file-system "$tmp"
        die "debootstrap failed"
    fi
    unmount_under "$tmp"
    rm -f "$tmp.log"
    # Boot quickly and quietly: no getty on the pipe console, no network managers.
    chroot "$tmp" systemctl mask console-getty.service getty@tty1.service \
        systemd-timesyncd.service systemd-networkd.service systemd-resolved.service \
        >/dev/null 2>&1 || true
    : >"$tmp/etc/machine-id"
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    printf '%s\n' "$STAMP" >"$tmp/.leaflock-stamp"
    if [[ -e $ROOT ]]; then
        unmount_under "$ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    mv "$tmp" "$ROOT"
    log "prepared $ROOT in $(elapsed_since "$t0") s ($(du -sh --one-file-system "$ROOT" | cut -f1))"
}

cmd_copy() {
    local dest=${1:?usage: $0 copy DEST}
    [[ -f $ROOT/.leaflock-stamp ]] || die "$ROOT is not prepared: run '$0 prepare'"
    [[ ! -e $dest ]] || die "$dest exists"
    unmount_under "$ROOT"
    cp -a --one-file-system "$ROOT" "$dest"
}

case ${1:-} in
prepare) cmd_prepare ;;
path) printf '%s\n' "$ROOT" ;;
copy) cmd_copy "${2:-}" ;;
*)
    echo "usage: $0 prepare|path|copy DEST" >&2
    exit 2
    ;;
esac
