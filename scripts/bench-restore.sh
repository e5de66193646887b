#!/usr/bin/env bash
#
# scripts/bench-restore.sh - what the ways back cost: a whole restore against one aimed
# at what was lost.
#
# Usage: scripts/bench-restore.sh [--size-mb N] [--rounds N]
#
#   --size-mb N     size of the LeafLock-shaped database (default 256; the database
#                   leaflock_bench_<N>mb of scripts/bench.sh is reused when it exists)
#   --rounds N      rounds; every round runs each restore once, alternating (default 3)
#
# Not a test and not run in CI. Starts the local servers (scripts/testbed.sh), builds
# the release binary, backs the database up once into a local directory, then restores
# it into a new, empty database on the same PostgreSQL 15 server, each way in turn:
#   (1) whole                      restore KEY
#   (2) --table tags               a small table (and users, which it references)
#   (3) --table notes              the largest (and users, workspaces, folders)
#   (4) --schema-only              definitions only
# with /usr/bin/time: wall time, CPU time (user + system of the runner and pg_restore;
# the server's own CPU is not included) and peak RSS. Prints a Markdown table of medians.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_PREFIX=bench-restore
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//'
}

SIZE_MB=256
ROUNDS=3
while (($# > 0)); do
    case $1 in
    --size-mb) SIZE_MB=${2:?--size-mb needs a value}; shift 2 ;;
    --size-mb=*) SIZE_MB=${1#*=}; shift ;;
    --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
    --rounds=*) ROUNDS=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
if ! [[ $SIZE_MB =~ ^[0-9]+$ ]] || ((SIZE_MB == 0)); then die "--size-mb must be a positive whole number"; fi
if ! [[ $ROUNDS =~ ^[0-9]+$ ]] || ((ROUNDS == 0)); then die "--rounds must be a positive whole number"; fi

"$SCRIPT_DIR/testbed.sh" install >&2
"$SCRIPT_DIR/testbed.sh" start >&2
TESTBED=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}
# shellcheck disable=SC1091 # the env file is written by `testbed.sh start` when it runs
. "$TESTBED/env"
have /usr/bin/time || die "/usr/bin/time is missing (scripts/testbed.sh install provides it)"

PG_BIN=$LEAFLOCK_TEST_PG15_BIN
DB=leaflock_bench_${SIZE_MB}mb
ADMIN_URL=$LEAFLOCK_TEST_PG15_URL
psql_admin() { "$PG_BIN/psql" "$ADMIN_URL" -XAtqc "$1"; }

bench_database "$PG_BIN" "$ADMIN_URL" "$DB" "$SIZE_MB" >/dev/null

log "building the release binary"
(cd "$ROOT" && cargo build --release --locked -q)
BIN=$ROOT/target/release/leaflock-backup

WORK=$(mktemp -d /tmp/leaflock-bench-restore.XXXXXX)
TARGET=leaflock_bench_restore_$$
cleanup() {
    psql_admin "DROP DATABASE IF EXISTS $TARGET WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The runner, with an environment holding only its settings.
RUNNER=$WORK/runner.sh
runner_script "$RUNNER" "exec $(printf %q "$BIN") \"\$@\"" "PATH=$PG_BIN:$PATH" \
    "LEAFLOCK_BACKUP_DATABASE_URL=${ADMIN_URL%/*}/$DB" \
    "LEAFLOCK_BACKUP_TARGET_DATABASE_URL=${ADMIN_URL%/*}/$TARGET" \
    "LEAFLOCK_BACKUP_LOCAL_DIR=$WORK/backups" "TMPDIR=$WORK" \
    LEAFLOCK_BACKUP_LOG_FORMAT=json

log "backing up $DB"
"$RUNNER" run --no-progress >"$WORK/run.out" 2>&1 || { tail -n 20 "$WORK/run.out" >&2; die "the backup failed"; }
uncompressed=$(grep -o '"uncompressed_bytes":[0-9]*' "$WORK/run.out" | tail -n1 | cut -d: -f2)

# measure NAME ROUND ARGS...: restore with ARGS into a new empty database under
# /usr/bin/time; record "wall cpu rss_kib" in $WORK/NAME.results.
measure() {
    local name=$1 round=$2
    shift 2
    local tf=$WORK/$name.time out=$WORK/$name.$round.out
    psql_admin "DROP DATABASE IF EXISTS $TARGET WITH (FORCE)" >/dev/null
    psql_admin "CREATE DATABASE $TARGET" >/dev/null
    sync
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "$RUNNER" restore latest --yes "$@" >"$out" 2>&1; then
        tail -n 20 "$out" >&2
        die "$name failed"
    fi
    read -r wall user sys rss <"$tf"
    local cpu
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
    echo "$wall $cpu $rss" >>"$WORK/$name.results"
    log "round $round $name: wall ${wall}s cpu ${cpu}s rss ${rss}KiB"
}

NAMES=(whole tags notes schema)
for ((round = 1; round <= ROUNDS; round++)); do
    measure whole "$round"
    measure tags "$round" --table tags
    measure notes "$round" --table notes
    measure schema "$round" --schema-only
done

# median FILE COLUMN
median() {
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# shellcheck disable=SC2016 # backticks are Markdown
label() {
    case $1 in
    whole) echo '(1) `restore KEY` (whole, streamed)' ;;
    tags) echo '(2) `restore KEY --table tags` (with users)' ;;
    notes) echo '(3) `restore KEY --table notes` (with users, workspaces, folders)' ;;
    schema) echo '(4) `restore KEY --schema-only`' ;;
    esac
}

echo
echo "Database: $DB on PostgreSQL 15; archive: ${uncompressed:-?} bytes uncompressed; medians of $ROUNDS rounds."
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(date -u +%Y-%m-%d)."
echo
echo '| restore | wall s | CPU s (runner + pg_restore) | peak RSS MiB |'
echo '|---|---|---|---|'
for name in "${NAMES[@]}"; do
    f=$WORK/$name.results
    echo "| $(label "$name") | $(median "$f" 1) | $(median "$f" 2) | $(awk -v k="$(median "$f" 3)" 'BEGIN { printf "%.0f", k / 1024 }') |"
done
