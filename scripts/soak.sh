#!/usr/bin/env bash
#
# scripts/soak.sh - many consecutive `run --restore-drill` backups through random
# transient S3 faults, then the ledger: every run produced a verified backup or left
# nothing, the Pushgateway's counters equal the true number of successes and
# failures, no multipart upload is left open, and peak RSS did not grow.
#
# Needs the test bed (scripts/testbed.sh start). Not part of the test suite (a test
# runs it with --runs 5).
#
#   --runs N          consecutive runs (default 50)
#   --size-mb N       size of the generated database (default 5)
#   --fault-rate F    chance of each of three faults per S3 request (default 0.08):
#                     500 InternalError, 503 SlowDown, a reset mid-body (uploads)
#   --max-attempts N  S3 attempts per request (default 3, so some runs do fail)
#   --seed N          the fault proxy's seed (default: the process id)
#   LEAFLOCK_BACKUP_BIN / LEAFLOCK_FAULTPROXY_BIN  binaries (default: cargo build)
#
# The last line on stdout is a JSON summary. Exit 0 when every check holds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_PREFIX=soak
. scripts/lib.sh

runs=50 size_mb=5 rate=0.08 attempts=3 seed=$$
while (($#)); do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --size-mb) size_mb=$2; shift 2 ;;
    --fault-rate) rate=$2; shift 2 ;;
    --max-attempts) attempts=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done

env_file=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}/env
[[ -f $env_file ]] || die "the test bed is not running: scripts/testbed.sh start"
# shellcheck disable=SC1090 # the env file is written by `testbed.sh start` when it runs
. "$env_file"
for t in jq curl /usr/bin/time; do have "$t" || die "$t is needed (scripts/testbed.sh install)"; done

if [[ -z ${LEAFLOCK_BACKUP_BIN:-} || -z ${LEAFLOCK_FAULTPROXY_BIN:-} ]]; then
    log "building"
    cargo build --quiet --bins
    LEAFLOCK_BACKUP_BIN=${LEAFLOCK_BACKUP_BIN:-target/debug/leaflock-backup}
    LEAFLOCK_FAULTPROXY_BIN=${LEAFLOCK_FAULTPROXY_BIN:-target/debug/faultproxy}
fi

work=$(mktemp -d)
tag=soak_$$_$(date +%s)
db=$tag
prefix=$tag
group=$tag
proxy_pid=
psql_admin() { "$LEAFLOCK_TEST_PG15_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$LEAFLOCK_TEST_PG15_URL" "$@"; }
aws_() {
    AWS_ACCESS_KEY_ID=$LEAFLOCK_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$LEAFLOCK_TEST_S3_SECRET_KEY \
        AWS_DEFAULT_REGION=$LEAFLOCK_TEST_S3_REGION \
        "$LEAFLOCK_TEST_AWS_CLI" --endpoint-url "$LEAFLOCK_TEST_S3_ENDPOINT" "$@"
}
cleanup() {
    if [[ -n $proxy_pid ]]; then kill "$proxy_pid" 2>/dev/null || true; fi
    psql_admin -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    aws_ s3 rm --quiet --recursive "s3://$LEAFLOCK_TEST_S3_BUCKET/$prefix/" >/dev/null 2>&1 || true
    curl -fs -X DELETE "$LEAFLOCK_TEST_PUSHGATEWAY_URL/metrics/job/leaflock-backup/database/$group" >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

log "database $db (${size_mb} MiB), prefix $prefix, fault rate $rate x3, seed $seed"
bash scripts/generate-db.sh --url "$LEAFLOCK_TEST_PG15_URL" --database "$db" --size-mb "$size_mb" \
    --psql "$LEAFLOCK_TEST_PG15_BIN/psql" >/dev/null
db_url=${LEAFLOCK_TEST_PG15_URL%/*}/$db

s3_hostport=${LEAFLOCK_TEST_S3_ENDPOINT#http://}
"$LEAFLOCK_FAULTPROXY_BIN" --upstream "$s3_hostport" --seed "$seed" \
    --fault "status=500,rate=$rate" --fault "status=503,rate=$rate" \
    --fault "reset,rate=$rate,method=PUT" >"$work/proxy.out" 2>"$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 50); do grep -q listening "$work/proxy.out" 2>/dev/null && break; sleep 0.1; done
proxy_url=http://$(sed -n 's/^listening //p' "$work/proxy.out")

# A command against the test bucket, in a clean environment; S3 through the proxy
# only for `run`.
bk_env=(env -i PATH="$LEAFLOCK_TEST_PG15_BIN:/usr/bin:/bin" LEAFLOCK_BACKUP_LOG_FORMAT=json
    LEAFLOCK_BACKUP_S3_BUCKET="s3://$LEAFLOCK_TEST_S3_BUCKET/$prefix"
    LEAFLOCK_BACKUP_S3_ACCESS_KEY="$LEAFLOCK_TEST_S3_ACCESS_KEY"
    LEAFLOCK_BACKUP_S3_SECRET_KEY="$LEAFLOCK_TEST_S3_SECRET_KEY"
    LEAFLOCK_BACKUP_S3_REGION="$LEAFLOCK_TEST_S3_REGION" LEAFLOCK_BACKUP_DATABASE="$db")
bk() { "${bk_env[@]}" LEAFLOCK_BACKUP_S3_ENDPOINT="$LEAFLOCK_TEST_S3_ENDPOINT" "$LEAFLOCK_BACKUP_BIN" "$@"; }
count_kind() { bk list --json 2>/dev/null | jq "[.[] | select(.kind == \"$1\")] | length"; }
open_uploads() {
    aws_ s3api list-multipart-uploads --bucket "$LEAFLOCK_TEST_S3_BUCKET" --prefix "$prefix/" \
        --output json | jq '(.Uploads // []) | length'
}

ok=0 failed=0 drill_failed=0 bad=0
rss=()
t0=$(now_ms)
for i in $(seq "$runs"); do
    before=$(count_kind backup)
    set +e
    /usr/bin/time -f '%M' -o "$work/rss" "${bk_env[@]}" LEAFLOCK_BACKUP_S3_ENDPOINT="$proxy_url" \
        "$LEAFLOCK_BACKUP_BIN" run --restore-drill \
        --database-url "$db_url" --s3-max-attempts "$attempts" --part-size 5MiB \
        --pushgateway-url "$LEAFLOCK_TEST_PUSHGATEWAY_URL" --metrics-database "$group" \
        --orphan-grace 0 2>"$work/run-$i.log"
    code=$?
    set -e
    rss+=("$(tail -1 "$work/rss")")
    after=$(count_kind backup)
    uploads=$(open_uploads)
    debris=$(($(count_kind no_manifest) + $(count_kind partial) + $(count_kind manifest_without_object)))
    drill=$(bk list --json 2>/dev/null | jq -r '[.[] | select(.kind == "backup")][0].drill.passed // "none"')
    why=$(jq -Rr 'fromjson? | select(.exit_code != null) | .error // .msg' "$work/run-$i.log" 2>/dev/null | tail -1 | cut -c1-160 || true)
    verdict=
    case $code in
    0) if ((after == before + 1)) && [[ $drill == true ]]; then ok=$((ok + 1)); verdict=backup
       else bad=$((bad + 1)); verdict="BAD: exit 0 but backups $before -> $after, drill $drill"; fi ;;
    1) if ((after == before)); then failed=$((failed + 1)); verdict="nothing left"
       # Kept but not verified: the drill failed, or passed but its record could not be
       # written (then no record exists, and the run's final error is a `drill:` one).
       elif ((after == before + 1)) && { [[ $drill == false ]] || [[ $drill == none && $why == drill:* ]]; }; then
           failed=$((failed + 1)); drill_failed=$((drill_failed + 1)); verdict="kept, drill $drill"
       else bad=$((bad + 1)); verdict="BAD: exit 1 but backups $before -> $after, drill $drill"; fi ;;
    *) bad=$((bad + 1)); verdict="BAD: exit $code" ;;
    esac
    if ((uploads != 0 || debris != 0)); then
        bad=$((bad + 1)); verdict="$verdict; BAD: $uploads open upload(s), $debris debris"
    fi
    log "run $i/$runs: exit $code, ${rss[-1]} KiB peak RSS: $verdict${why:+ ($why)}"
    if [[ $verdict == BAD* || $verdict == *BAD:* ]]; then cp "$work/run-$i.log" "/tmp/$tag-run-$i.log"; fi
    sleep 1 # keys have one-second resolution
done
seconds=$((($(now_ms) - t0) / 1000))

metrics=$(curl -fs "$LEAFLOCK_TEST_PUSHGATEWAY_URL/metrics" | grep "database=\"$group\"" || true)
pushed() { printf '%s\n' "$metrics" | grep "^leaflock_backups_total{" | grep "status=\"$1\"" | awk '{print $2}'; }
p_ok=$(pushed success) p_failed=$(pushed failure)
[[ ${p_ok:-x} == "$ok" ]] || { bad=$((bad + 1)); warn "pushed success_total ${p_ok:-none} != $ok"; }
[[ ${p_failed:-x} == "$failed" ]] || { bad=$((bad + 1)); warn "pushed failure_total ${p_failed:-none} != $failed"; }

# Every stored backup verifies.
verified=0
for key in $(bk list --json 2>/dev/null | jq -r '.[] | select(.kind == "backup") | .key'); do
    if bk verify "$key" >/dev/null 2>&1; then verified=$((verified + 1)); else
        bad=$((bad + 1)); warn "$key does not verify"; fi
done

# Peak RSS: the median of the last five runs against the median of the first five.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
n=${#rss[@]}
k=$((n < 5 ? n : 5))
first=$(median "${rss[@]:0:k}")
last=$(median "${rss[@]:n-k:k}")
max=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
if ((last > first * 12 / 10 + 4096)); then bad=$((bad + 1)); warn "peak RSS grew: $first -> $last KiB"; fi

faults=$(grep -c -- '-> [0-9]\{3\} \|-> reset' "$work/proxy.log" || true)
requests=$(grep -c -- ' -> ' "$work/proxy.log" || true)
final_uploads=$(open_uploads)
final_debris=$(($(count_kind no_manifest) + $(count_kind partial) + $(count_kind manifest_without_object)))
((final_uploads == 0)) || bad=$((bad + 1))
log "$runs runs in ${seconds}s: $ok verified backups, $failed failures ($drill_failed kept but not verified: drill failed or not on record), $bad violations"
log "S3 requests through the proxy: $requests, faults injected: $faults"
log "pushed: success $p_ok, failure $p_failed; peak RSS KiB first/last/max: $first/$last/$max"
jq -nc --argjson runs "$runs" --argjson ok "$ok" --argjson failed "$failed" \
    --argjson drill_failed "$drill_failed" --argjson bad "$bad" --argjson verified "$verified" \
    --argjson requests "$requests" --argjson faults "$faults" --argjson seconds "$seconds" \
    --argjson open_uploads "$final_uploads" --argjson debris "$final_debris" \
    --argjson pushed_success "${p_ok:-null}" --argjson pushed_failure "${p_failed:-null}" \
    --argjson rss_first_kib "$first" --argjson rss_last_kib "$last" --argjson rss_max_kib "$max" \
    --arg seed "$seed" --arg fault_rate "$rate" \
    '{runs:$runs, verified_backups:$ok, failures:$failed, drill_failed:$drill_failed,
      violations:$bad, backups_verified_at_end:$verified, s3_requests:$requests,
      faults_injected:$faults, open_uploads:$open_uploads, debris:$debris,
      pushed_success:$pushed_success, pushed_failure:$pushed_failure,
      rss_first_kib:$rss_first_kib, rss_last_kib:$rss_last_kib, rss_max_kib:$rss_max_kib,
      seconds:$seconds, seed:$seed, fault_rate:$fault_rate}'
((bad == 0))
