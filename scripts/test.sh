#!/usr/bin/env bash
#
# scripts/test.sh - the whole test suite on a fresh machine.
#
# Installs what the test bed needs (scripts/testbed.sh install), starts the real
# servers on loopback (PostgreSQL 15 and 18, SeaweedFS S3, a Pushgateway), runs every
# unit and integration test against them, and stops the servers it started.
#
#   LEAFLOCK_KEEP_TESTBED=1   leave the servers running afterwards
#   extra arguments           passed to `cargo test` (e.g. a test name filter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/testbed.sh install
was_running=0
if scripts/testbed.sh status >/dev/null 2>&1; then was_running=1; fi
scripts/testbed.sh start
if [ "$was_running" = 0 ] && [ "${LEAFLOCK_KEEP_TESTBED:-0}" != 1 ]; then
  trap 'scripts/testbed.sh stop' EXIT
fi

cargo test --locked --all-targets --no-fail-fast "$@"
