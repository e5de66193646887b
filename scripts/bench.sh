#!/usr/bin/env bash
#
# scripts/bench.sh - how close `leaflock-backup run` gets to pg_dump itself.
#
# Usage: scripts/bench.sh [--size-mb N] [--rounds N] [--no-shell] [--regenerate]
#
#   --size-mb N     size of the LeafLock-shaped database to back up (default 1024)
#   --rounds N      rounds; every round runs each command once, alternating (default 3)
#   --no-shell      skip the shell pipelines (2) and (3): for large sizes, where
#                   only the runner's figures (peak RSS) are wanted
#   --regenerate    re-create the database even if one of that size exists
#
# Not a test and not run in CI. Installs and starts the local servers
# (scripts/testbed.sh), generates the database on PostgreSQL 15 (kept for the
# next run as leaflock_bench_<N>mb), builds the release binary, then measures:
#   (1) pg_dump -Fc -Z0 > /dev/null                        the floor
#   (2) pg_dump -Fc -Z0 | gzip -6 | aws s3 cp - s3://...   the shell pipeline
#   (3) pg_dump -Fc -Z0 | pigz -6 > file
#   (4) leaflock-backup run --compression gzip             to the same S3 server
#   (5) leaflock-backup run --compression zstd
# with /usr/bin/time: wall time, CPU time (user + system of the command and all its
# children; the PostgreSQL server's own CPU is not included), peak RSS (of the
# largest single process) and the stored size. Prints a Markdown table of medians
# and the ratios to (1) and (2). Objects written to S3 are deleted afterwards.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_PREFIX=bench
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '3,10p' "$0" | sed 's/^# \{0,1\}//'
}

SIZE_MB=1024
ROUNDS=3
SHELL_PIPELINES=1
REGENERATE=0
while (($# > 0)); do
    case $1 in
    --size-mb) SIZE_MB=${2:?--size-mb needs a value}; shift 2 ;;
    --size-mb=*) SIZE_MB=${1#*=}; shift ;;
    --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
    --rounds=*) ROUNDS=${1#*=}; shift ;;
    --no-shell) SHELL_PIPELINES=0; shift ;;
    --regenerate) REGENERATE=1; shift ;;
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
for tool in pigz gzip /usr/bin/time; do
    have "$tool" || die "$tool is missing (scripts/testbed.sh install provides it)"
done

PG_BIN=$LEAFLOCK_TEST_PG15_BIN
DB=leaflock_bench_${SIZE_MB}mb
ADMIN_URL=$LEAFLOCK_TEST_PG15_URL
# pg_dump gets the password from the environment, never on its command line.
export PGPASSWORD=$LEAFLOCK_TEST_PG_PASSWORD
DB_URL=$(sed -E 's#//([^:@/]+):[^@/]*@#//\1@#' <<<"${ADMIN_URL%/*}/$DB")

have_bytes=$(bench_database "$PG_BIN" "$ADMIN_URL" "$DB" "$SIZE_MB" "$REGENERATE")

log "building the release binary"
(cd "$ROOT" && cargo build --release --locked -q)
BIN=$ROOT/target/release/leaflock-backup

WORK=$(mktemp -d /tmp/leaflock-bench.XXXXXX)
PREFIX=bench-$$
S3_URL=s3://$LEAFLOCK_TEST_S3_BUCKET/$PREFIX
export AWS_ACCESS_KEY_ID=$LEAFLOCK_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$LEAFLOCK_TEST_S3_SECRET_KEY
export AWS_DEFAULT_REGION=$LEAFLOCK_TEST_S3_REGION AWS_CONFIG_FILE=/dev/null
export AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
s3() { "$LEAFLOCK_TEST_AWS_CLI" --endpoint-url "$LEAFLOCK_TEST_S3_ENDPOINT" "$@"; }
cleanup() {
    s3 s3 rm --recursive --quiet "$S3_URL/" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The runner, with an environment holding only its settings (the password in the
# URL stays in its environment, never on a command line).
RUNNER=$WORK/runner.sh
runner_script "$RUNNER" "exec $(printf %q "$BIN") run --no-progress --compression \"\$1\"" \
    "PATH=$PG_BIN:$PATH" \
    "LEAFLOCK_BACKUP_DATABASE_URL=${ADMIN_URL%/*}/$DB" \
    "LEAFLOCK_BACKUP_S3_BUCKET=$S3_URL" \
    "LEAFLOCK_BACKUP_S3_ENDPOINT=$LEAFLOCK_TEST_S3_ENDPOINT" \
    "LEAFLOCK_BACKUP_S3_ACCESS_KEY=$AWS_ACCESS_KEY_ID" \
    "LEAFLOCK_BACKUP_S3_SECRET_KEY=$AWS_SECRET_ACCESS_KEY" \
    "LEAFLOCK_BACKUP_S3_REGION=$AWS_DEFAULT_REGION" \
    LEAFLOCK_BACKUP_LOG_FORMAT=json LEAFLOCK_BACKUP_LOG_LEVEL=leaflock_backup=debug,info

# field NAME FILE: the last number logged as "NAME" in FILE (JSON lines), or 0.
field() {
    local v
    v=$(grep -o "\"$1\":[0-9.e+-]*" "$2" | tail -n1 | cut -d: -f2)
    echo "${v:-0}"
}

# measure NAME ROUND COMMAND: run COMMAND (a bash string) under /usr/bin/time and
# record "wall cpu rss_kib stored_bytes" in $WORK/NAME.results.
measure() {
    local name=$1 round=$2 cmd=$3
    local tf=$WORK/$name.time out=$WORK/$name.$round.out stored=0
    sync
    if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" bash -c "$cmd" >"$out" 2>&1; then
        tail -n 20 "$out" >&2
        die "$name failed"
    fi
    case $name in
    shell) stored=$(s3 s3api head-object --bucket "$LEAFLOCK_TEST_S3_BUCKET" \
        --key "$PREFIX/shell-$round.dump.gz" --query ContentLength --output text) ;;
    pigz) stored=$(stat -c %s "$WORK/pigz.dump.gz"); rm -f "$WORK/pigz.dump.gz" ;;
    runner_*) stored=$(grep -o '"stored_bytes":[0-9]*' "$out" | tail -n1 | cut -d: -f2)
        grep -F '"pipeline stages"' "$out" >"$WORK/$name.stages" || true
        grep -F '"CPU time so far' "$out" >>"$WORK/$name.stages" || true
        grep -F '"archive digests' "$out" >>"$WORK/$name.stages" || true
        # The content digests' cost: "runner_cpu digest_cpu uncompressed_bytes pg_dump_cpu".
        echo "$(field runner_cpu_seconds "$out") $(field digest_cpu_seconds "$out") $(field uncompressed_bytes "$out") $(field pg_dump_cpu_seconds "$out")" >>"$WORK/$name.digests" ;;
    esac
    read -r wall user sys rss <"$tf"
    echo "$wall $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }') $rss ${stored:-0}" >>"$WORK/$name.results"
    log "round $round $name: wall ${wall}s cpu $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')s rss ${rss}KiB stored ${stored:-0}"
    s3 s3 rm --recursive --quiet "$S3_URL/" >/dev/null 2>&1 || true
}

NAMES=(floor)
((SHELL_PIPELINES)) && NAMES+=(shell pigz)
NAMES+=(runner_gzip runner_zstd)
for ((round = 1; round <= ROUNDS; round++)); do
    for name in "${NAMES[@]}"; do
        case $name in
        floor) measure floor "$round" "'$PG_BIN/pg_dump' -Fc -Z0 -d '$DB_URL' >/dev/null" ;;
        shell) measure shell "$round" "set -o pipefail; '$PG_BIN/pg_dump' -Fc -Z0 -d '$DB_URL' | gzip -6 | '$LEAFLOCK_TEST_AWS_CLI' --endpoint-url '$LEAFLOCK_TEST_S3_ENDPOINT' s3 cp - '$S3_URL/shell-$round.dump.gz'" ;;
        pigz) measure pigz "$round" "set -o pipefail; '$PG_BIN/pg_dump' -Fc -Z0 -d '$DB_URL' | pigz -6 >'$WORK/pigz.dump.gz'" ;;
        runner_gzip) measure runner_gzip "$round" "'$RUNNER' gzip:6" ;;
        runner_zstd) measure runner_zstd "$round" "'$RUNNER' zstd:3" ;;
        esac
    done
done

# median FILE COLUMN
median() {
    awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# shellcheck disable=SC2016 # backticks are Markdown
label() {
    case $1 in
    floor) echo '(1) `pg_dump -Fc -Z0 > /dev/null` (the floor)' ;;
    shell) echo '(2) `pg_dump -Fc -Z0 \| gzip -6 \| aws s3 cp -`' ;;
    pigz) echo '(3) `pg_dump -Fc -Z0 \| pigz -6 > file`' ;;
    runner_gzip) echo '(4) `leaflock-backup run` gzip:6 to S3' ;;
    runner_zstd) echo '(5) `leaflock-backup run` zstd:3 to S3' ;;
    esac
}

floor_wall=$(median "$WORK/floor.results" 1)
shell_wall=
((SHELL_PIPELINES)) && shell_wall=$(median "$WORK/shell.results" 1)
uncompressed=$(grep -ho '"uncompressed_bytes":[0-9]*' "$WORK"/runner_gzip.*.out | tail -n1 | cut -d: -f2)

echo
echo "Database: $DB, $((have_bytes > 0 ? have_bytes / 1048576 : SIZE_MB)) MiB on PostgreSQL 15; dump: ${uncompressed:-?} bytes; medians of $ROUNDS rounds."
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(date -u +%Y-%m-%d)."
echo
echo '| command | wall s | CPU s (user+sys) | peak RSS MiB | stored bytes | wall / (1) | wall / (2) |'
echo '|---|---|---|---|---|---|---|'
for name in "${NAMES[@]}"; do
    f=$WORK/$name.results
    wall=$(median "$f" 1)
    cpu=$(median "$f" 2)
    rss=$(median "$f" 3)
    stored=$(median "$f" 4)
    [[ $name == floor ]] && stored='–'
    r1=$(awk -v a="$wall" -v b="$floor_wall" 'BEGIN { printf "%.2f", a / b }')
    r2='–'
    [[ -n $shell_wall ]] && r2=$(awk -v a="$wall" -v b="$shell_wall" 'BEGIN { printf "%.3f", a / b }')
    printf '| %s | %.1f | %.1f | %.0f | %s | %s | %s |\n' "$(label "$name")" "$wall" "$cpu" \
        "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" "$stored" "$r1" "$r2"
done
echo
echo "Content digests (medians; CPU seconds per GB of dump; the runner's CPU without pg_dump's):"
echo
echo '| command | runner CPU with digests | of which the digest thread | without (difference) | cost |'
echo '|---|---|---|---|---|'
for name in runner_gzip runner_zstd; do
    f=$WORK/$name.digests
    [[ -s $f ]] || continue
    awk '$3 > 0 { print $1 / $3 * 1e9, $2 / $3 * 1e9, $4 / $3 * 1e9 }' "$f" >"$f.per_gb"
    with=$(median "$f.per_gb" 1)
    digest=$(median "$f.per_gb" 2)
    pg_dump=$(median "$f.per_gb" 3)
    printf '| %s | %.2f s/GB | %.3f s/GB | %.2f s/GB | +%.1f %% of the runner'"'"'s CPU (+%.1f %% with pg_dump'"'"'s) |\n' \
        "$(label "$name")" "$with" "$digest" "$(awk -v a="$with" -v b="$digest" 'BEGIN { print a - b }')" \
        "$(awk -v a="$with" -v b="$digest" 'BEGIN { print (a - b > 0) ? 100 * b / (a - b) : 0 }')" \
        "$(awk -v a="$with" -v b="$digest" -v p="$pg_dump" 'BEGIN { print (a - b + p > 0) ? 100 * b / (a - b + p) : 0 }')"
done
echo
echo "Where the runner's time went (last round, debug log):"
for name in runner_gzip runner_zstd; do
    [[ -s $WORK/$name.stages ]] || continue
    echo "- $name:"
    tail -n 3 "$WORK/$name.stages" | sed 's/^/    /'
done
