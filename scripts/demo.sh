#!/usr/bin/env bash
#
# scripts/demo.sh - one real backup on this machine, from nothing.
#
# Starts the local servers (scripts/testbed.sh), generates a LeafLock-shaped
# database (DEMO_SIZE_MB, default 64 MiB) on PostgreSQL 15, builds the release
# binary, runs `leaflock-backup run` to the local S3 server with metrics pushed to
# the local Pushgateway, then shows where the backup went and what the Pushgateway
# now holds. The servers keep running afterwards (`scripts/testbed.sh stop`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

size=${DEMO_SIZE_MB:-64}
scripts/testbed.sh install
scripts/testbed.sh start
# shellcheck disable=SC1091 # the env file is written by `testbed.sh start` when it runs
. "${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}/env"

echo "== Generating a LeafLock-shaped database 'leaflock_demo' of about ${size} MiB"
scripts/generate-db.sh --url "$LEAFLOCK_TEST_PG15_URL" --database leaflock_demo \
  --size-mb "$size" --psql "$LEAFLOCK_TEST_PG15_BIN/psql" >/dev/null

echo "== Building leaflock-backup (release)"
cargo build --release --locked --quiet

echo "== Backing up"
export LEAFLOCK_BACKUP_DATABASE_URL="${LEAFLOCK_TEST_PG15_URL%/*}/leaflock_demo"
export LEAFLOCK_BACKUP_S3_BUCKET="s3://$LEAFLOCK_TEST_S3_BUCKET/demo"
export LEAFLOCK_BACKUP_S3_ENDPOINT="$LEAFLOCK_TEST_S3_ENDPOINT"
export LEAFLOCK_BACKUP_S3_ACCESS_KEY="$LEAFLOCK_TEST_S3_ACCESS_KEY"
export LEAFLOCK_BACKUP_S3_SECRET_KEY="$LEAFLOCK_TEST_S3_SECRET_KEY"
export LEAFLOCK_BACKUP_PUSHGATEWAY_URL="$LEAFLOCK_TEST_PUSHGATEWAY_URL"
target/release/leaflock-backup --log-format text run

echo
echo "== In the bucket (s3://$LEAFLOCK_TEST_S3_BUCKET/demo/)"
AWS_ACCESS_KEY_ID="$LEAFLOCK_TEST_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$LEAFLOCK_TEST_S3_SECRET_KEY" \
  AWS_DEFAULT_REGION="$LEAFLOCK_TEST_S3_REGION" \
  "$LEAFLOCK_TEST_AWS_CLI" --endpoint-url "$LEAFLOCK_TEST_S3_ENDPOINT" s3 ls --recursive \
  "s3://$LEAFLOCK_TEST_S3_BUCKET/demo/" | tail -n 6
echo
echo "== What the Pushgateway now shows ($LEAFLOCK_TEST_PUSHGATEWAY_URL/metrics)"
curl -fsS "$LEAFLOCK_TEST_PUSHGATEWAY_URL/metrics" | grep -E '^leaflock_' | grep 'database="leaflock_demo"' \
  | grep -v '_bucket{' | sed -E '/status=/!s/\{[^}]*\}//; s/\{[^}]*(status="[a-z]+")[^}]*\}/{\1}/'
