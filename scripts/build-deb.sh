#!/usr/bin/env bash
#
# scripts/build-deb.sh - the Debian package: target/debian/leaflock-backup_*.deb.
#
# Usage: scripts/build-deb.sh [--profile PROFILE] [--no-build] [--fast]
#        (default: release; --fast: quicker, larger compression of the .deb)
#
# Builds the binaries of PROFILE (--locked; --no-build: they are built already), generates the man pages and shell
# completions from the clap definitions (src/bin/gen-assets.rs) into
# target/deb-assets/, and packages them with cargo-deb (found on PATH or in
# ${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}/cargo/bin, where
# `scripts/testbed.sh install` puts it). Prints the path of the .deb on stdout.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_PREFIX=build-deb
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"
cd "$SCRIPT_DIR/.."

PROFILE=release
BUILD=1
FAST=()
while (($#)); do
    case $1 in
    --fast)
        FAST=(--fast)
        shift
        ;;
    --no-build)
        BUILD=0
        shift
        ;;
    --profile)
        PROFILE=${2:?--profile needs a value}
        shift 2
        ;;
    *) die "unknown argument $1 (usage: $0 [--profile PROFILE] [--no-build])" ;;
    esac
done

CARGO_DEB=$(command -v cargo-deb || echo "${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}/cargo/bin/cargo-deb")
[[ -x $CARGO_DEB ]] || die "cargo-deb not found: run 'scripts/testbed.sh install'"

t0=$(now_ms)
if ((BUILD)); then
    cargo build --quiet --locked --profile "$PROFILE" --bin leaflock-backup --bin gen-assets
fi
dir=target/$PROFILE
[[ $PROFILE == dev ]] && dir=target/debug
rm -rf target/deb-assets
"$dir/gen-assets" target/deb-assets
out=$("$CARGO_DEB" --no-build --locked --profile "$PROFILE" "${FAST[@]}" 2>&1) || {
    printf '%s\n' "$out" >&2
    die "cargo deb failed"
}
deb=$(printf '%s\n' "$out" | grep '\.deb$' | tail -n1)
[[ -f $deb ]] || die "cargo deb did not say where the package is: $out"
log "built $deb in $(elapsed_since "$t0") s"
printf '%s\n' "$(realpath "$deb")"
