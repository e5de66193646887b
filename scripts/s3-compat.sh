#!/usr/bin/env bash
#
# scripts/s3-compat.sh - the suite's S3 tests (tests/s3.rs) against several S3 stores,
# and a table store x feature from their real outcomes.
#
# Usage: scripts/s3-compat.sh [STORE...]      (default: seaweedfs garage moto)
#
#   seaweedfs  the test bed's own store (scripts/testbed.sh start must have run)
#   garage     Garage $GARAGE_VERSION, built once from crates.io with
#              `cargo install garage --locked` into $COMPAT_DIR/garage (a release
#              build takes about 8 minutes on 2 cores; kept for the next run), or the
#              binary $LEAFLOCK_COMPAT_GARAGE_BIN; started here on loopback
#   moto       moto's server (PyPI moto[server], installed into a venv of its own,
#              $COMPAT_DIR/venv), started here on loopback
#
# Each store gets the whole of tests/s3.rs, one test at a time, with the tests' S3
# settings (LEAFLOCK_TEST_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _BUCKET, _REGION)
# pointed at it, and the checksum test once per --s3-checksum setting. A test that
# needs a feature the store is known to lack is told so by LEAFLOCK_TEST_S3_LACKS
# (below, per store) and prints why it skips; on such a store, asking for SSE-S3 or
# Object Lock must fail the run and leave no object. Everything else must pass.
#
# Not part of CI (Garage's build is too long). The table goes to stdout and to
# $COMPAT_DIR/table.txt; each test's output to $COMPAT_DIR/logs/.
#
# Ports (loopback; overridable): Garage S3 LEAFLOCK_COMPAT_GARAGE_PORT (28440, RPC
# and admin on the next two), moto LEAFLOCK_COMPAT_MOTO_PORT (28450).
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_PREFIX=s3-compat
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

TESTBED=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}
COMPAT_DIR=${LEAFLOCK_COMPAT_DIR:-$TESTBED/s3-compat}
VENV=$TESTBED/venv
GARAGE_VERSION=2.5.0
GARAGE_PORT=${LEAFLOCK_COMPAT_GARAGE_PORT:-28440}
MOTO_PORT=${LEAFLOCK_COMPAT_MOTO_PORT:-28450}
BUCKET=leaflock-compat
REGION=us-east-1

# What each store lacks, as the tests name it (LEAFLOCK_TEST_S3_LACKS). Garage 2.5
# ignores SSE-S3 and Object Lock headers (the request succeeds, nothing is applied)
# and If-None-Match; it has no SSE-KMS. moto 5 applies neither SSE-C nor Object Lock
# given to a multipart upload (HEAD of the completed object shows none).
lacks_of() {
    case $1 in
        garage) echo "sse-s3,object-lock,conditional-writes" ;;
        moto) echo "sse-c,object-lock" ;;
        *) echo "" ;;
    esac
}

CHECKSUMS="sha256 sha1 crc32 crc32c crc64nvme auto when-required"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT

[ -f "$TESTBED/env" ] || die "the test bed is not running ($TESTBED/env): scripts/testbed.sh start"
# shellcheck source=/dev/null  # written by scripts/testbed.sh start
. "$TESTBED/env"
# The test bed's own store, before the loop below points the tests elsewhere.
TB_S3_ENDPOINT=$LEAFLOCK_TEST_S3_ENDPOINT TB_S3_BUCKET=$LEAFLOCK_TEST_S3_BUCKET
TB_S3_ACCESS_KEY=$LEAFLOCK_TEST_S3_ACCESS_KEY TB_S3_SECRET_KEY=$LEAFLOCK_TEST_S3_SECRET_KEY
EP='' AK='' SK='' VER=''
mkdir -p "$COMPAT_DIR/logs"

# --- Garage -------------------------------------------------------------------

garage_bin() {
    if [ -n "${LEAFLOCK_COMPAT_GARAGE_BIN:-}" ]; then
        echo "$LEAFLOCK_COMPAT_GARAGE_BIN"
        return
    fi
    local bin=$COMPAT_DIR/garage/bin/garage
    if [ ! -x "$bin" ]; then
        log "building Garage $GARAGE_VERSION from crates.io (about 8 minutes; cached in $COMPAT_DIR/garage)"
        CARGO_TARGET_DIR=$COMPAT_DIR/garage/target \
            cargo install garage --version "$GARAGE_VERSION" --locked \
            --root "$COMPAT_DIR/garage" >"$COMPAT_DIR/logs/garage-build.log" 2>&1 ||
            die "Garage did not build: $COMPAT_DIR/logs/garage-build.log"
    fi
    echo "$bin"
}

# start_garage: sets EP AK SK VER.
start_garage() {
    local bin dir conf node key_out
    bin=$(garage_bin)
    dir=$COMPAT_DIR/garage-data
    rm -rf "$dir"
    mkdir -p "$dir/meta" "$dir/data"
    conf=$dir/garage.toml
    cat >"$conf" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((GARAGE_PORT + 1))"
rpc_public_addr = "127.0.0.1:$((GARAGE_PORT + 1))"
rpc_secret = "$(random_hex 64)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$GARAGE_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((GARAGE_PORT + 2))"
EOF
    port_in_use "$GARAGE_PORT" && die "port $GARAGE_PORT is taken (LEAFLOCK_COMPAT_GARAGE_PORT)"
    "$bin" -c "$conf" server >"$COMPAT_DIR/logs/garage.log" 2>&1 &
    PIDS+=("$!")
    wait_for 30 "Garage" "$bin" -c "$conf" status >/dev/null 2>&1 ||
        die "Garage did not start: $COMPAT_DIR/logs/garage.log"
    node=$("$bin" -c "$conf" node id -q 2>/dev/null | cut -d@ -f1)
    "$bin" -c "$conf" layout assign -z dc1 -c 1G "$node" >/dev/null
    "$bin" -c "$conf" layout apply --version 1 >/dev/null
    key_out=$("$bin" -c "$conf" key create compat-key)
    AK=$(awk '/Key ID:/ { print $NF }' <<<"$key_out")
    SK=$(awk '/Secret key:/ { print $NF }' <<<"$key_out")
    if [ -z "$AK" ] || [ -z "$SK" ]; then
        die "no key in Garage's answer: $key_out"
    fi
    "$bin" -c "$conf" bucket create "$BUCKET" >/dev/null
    "$bin" -c "$conf" bucket allow --read --write --owner "$BUCKET" --key compat-key >/dev/null
    EP=http://127.0.0.1:$GARAGE_PORT
    # "garage cargo:2.5.0 [features: ...]"
    VER=$("$bin" --version 2>/dev/null | awk '{ sub(/^[a-z]*:/, "", $2); print $2; exit }')
}

# --- moto ---------------------------------------------------------------------

# start_moto: sets EP AK SK VER.
start_moto() {
    local venv=$COMPAT_DIR/venv
    if [ ! -x "$venv/bin/moto_server" ]; then
        log "installing moto[server] into $venv"
        {
            python3 -m venv "$venv" && "$venv/bin/pip" install --quiet 'moto[server]'
        } >"$COMPAT_DIR/logs/moto-install.log" 2>&1 ||
            die "moto did not install: $COMPAT_DIR/logs/moto-install.log"
    fi
    port_in_use "$MOTO_PORT" && die "port $MOTO_PORT is taken (LEAFLOCK_COMPAT_MOTO_PORT)"
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$COMPAT_DIR/logs/moto.log" 2>&1 &
    PIDS+=("$!")
    wait_for 30 "moto" curl -fs -o /dev/null "http://127.0.0.1:$MOTO_PORT/" ||
        die "moto did not start: $COMPAT_DIR/logs/moto.log"
    compat_aws "http://127.0.0.1:$MOTO_PORT" moto-key moto-secret \
        s3api create-bucket --bucket "$BUCKET" >/dev/null
    EP=http://127.0.0.1:$MOTO_PORT AK=moto-key SK=moto-secret
    VER=$("$venv/bin/pip" show moto 2>/dev/null | awk '/^Version:/ { print $2 }')
}

# compat_aws ENDPOINT AK SK ARGS...: the test bed's aws CLI against a store.
compat_aws() {
    local ep=$1 ak=$2 sk=$3
    shift 3
    AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk AWS_DEFAULT_REGION=$REGION \
        AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        "$VENV/bin/aws" --endpoint-url "$ep" "$@"
}

# --- the tests ----------------------------------------------------------------

log "building the tests"
(cd "$REPO" && cargo test --test s3 --no-run) >"$COMPAT_DIR/logs/build.log" 2>&1 ||
    die "the tests did not build: $COMPAT_DIR/logs/build.log"
mapfile -t TESTS < <(cd "$REPO" && cargo test -q --test s3 -- --list 2>/dev/null |
    sed -n 's/: test$//p' | sort)
[ "${#TESTS[@]}" -gt 0 ] || die "no tests listed in tests/s3.rs"

# Short column names for the table, by test.
column_of() {
    case $1 in
        every_part_but_the_last_is_exactly_the_part_size) echo "equal parts" ;;
        reading_a_multipart_object_logs_no_checksum_warning) echo "quiet read" ;;
        objects_are_server_side_encrypted) echo "SSE-S3" ;;
        sse_c_objects_need_the_key_to_be_read) echo "SSE-C" ;;
        object_lock_retains_backups_for_the_configured_days) echo "Object Lock" ;;
        objects_at_the_keys_of_the_same_second_are_never_overwritten) echo "no overwrite" ;;
        run_list_verify_drill_and_prune_work) echo "run/list/verify/drill/prune" ;;
        a_protection_the_store_ignores_fails_the_run_and_leaves_no_object) echo "ignored protection fails" ;;
        a_store_that_refuses_flexible_checksums_works_with_when_required) echo "B2-like refusal" ;;
        a_refused_feature_is_named_with_the_stores_answer) echo "refusal named" ;;
        *) echo "$1" ;;
    esac
}

# run_one STORE TEST [CHECKSUM]: prints ok | FAILED | skipped.
run_one() {
    local store=$1 test=$2 sum=${3:-} log out notes
    log="$COMPAT_DIR/logs/$store-$test${sum:+-$sum}.log"
    if (cd "$REPO" && LEAFLOCK_TEST_S3_CHECKSUMS=${sum:-$CHECKSUMS_CSV} \
        cargo test -q --test s3 -- --exact "$test" --nocapture --test-threads 1) >"$log" 2>&1; then
        if grep -q '^SKIPPED:' "$log"; then out=skipped; else out=ok; fi
    else
        out=FAILED
    fi
    # What the test observed on the way (NOTE: lines), after its outcome.
    notes=$(sed -n 's/^NOTE: //p' "$log" | paste -sd ';' - | sed 's/;/; /g')
    echo "$out${notes:+ ($notes)}"
}
CHECKSUMS_CSV=$(tr ' ' ',' <<<"$CHECKSUMS")

declare -A RESULT VERSION
STORES=("$@")
[ "${#STORES[@]}" -gt 0 ] || STORES=(seaweedfs garage moto)
for store in "${STORES[@]}"; do
    case $store in
        seaweedfs)
            EP=$TB_S3_ENDPOINT AK=$TB_S3_ACCESS_KEY SK=$TB_S3_SECRET_KEY
            VER=$("$VENV/bin/weed" version 2>/dev/null | awk '{ print $3; exit }')
            bucket=$TB_S3_BUCKET
            ;;
        garage)
            start_garage
            bucket=$BUCKET
            ;;
        moto)
            start_moto
            bucket=$BUCKET
            ;;
        *) die "unknown store $store (seaweedfs, garage, moto)" ;;
    esac
    VERSION[$store]=$VER
    lacks=$(lacks_of "$store")
    log "$store $VER at $EP (lacks: ${lacks:-nothing})"
    export LEAFLOCK_TEST_S3_ENDPOINT=$EP LEAFLOCK_TEST_S3_ACCESS_KEY=$AK \
        LEAFLOCK_TEST_S3_SECRET_KEY=$SK LEAFLOCK_TEST_S3_BUCKET=$bucket \
        LEAFLOCK_TEST_S3_REGION=$REGION LEAFLOCK_TEST_S3_LACKS=$lacks
    for test in "${TESTS[@]}"; do
        if [ "$test" = every_checksum_setting_stores_a_multipart_backup_that_verifies ]; then
            for sum in $CHECKSUMS; do
                RESULT[$store,checksum $sum]=$(run_one "$store" "$test" "$sum")
                log "$store: checksum $sum: ${RESULT[$store,checksum $sum]}"
            done
            continue
        fi
        col=$(column_of "$test")
        RESULT[$store,$col]=$(run_one "$store" "$test")
        log "$store: $col: ${RESULT[$store,$col]}"
    done
    # Garage and moto were started for this store only.
    cleanup
    PIDS=()
done

# --- the table ----------------------------------------------------------------

COLUMNS_=()
for sum in $CHECKSUMS; do COLUMNS_+=("checksum $sum"); done
for test in "${TESTS[@]}"; do
    [ "$test" = every_checksum_setting_stores_a_multipart_backup_that_verifies ] && continue
    COLUMNS_+=("$(column_of "$test")")
done

{
    printf '| feature |'
    for store in "${STORES[@]}"; do printf ' %s %s |' "$store" "${VERSION[$store]}"; done
    printf '\n|---|'
    for _ in "${STORES[@]}"; do printf -- '---|'; done
    printf '\n'
    for col in "${COLUMNS_[@]}"; do
        printf '| %s |' "$col"
        for store in "${STORES[@]}"; do printf ' %s |' "${RESULT[$store,$col]:-}"; done
        printf '\n'
    done
} | tee "$COMPAT_DIR/table.txt"

failed=0
for k in "${!RESULT[@]}"; do
    [ "${RESULT[$k]}" = FAILED ] && failed=1
done
if [ "$failed" = 1 ]; then
    warn "some tests failed: see $COMPAT_DIR/logs/"
    exit 1
fi
