#!/usr/bin/env bash
#
# scripts/generate-db.sh - create a LeafLock-shaped database of a given size.
#
# Usage:
#   scripts/generate-db.sh --url URL --database NAME --size-mb N [--psql PATH]
#
#   --url URL        connection URL of any existing database on the server,
#                    e.g. postgresql://postgres:secret@127.0.0.1:25415/postgres
#                    (the role needs to create databases and extensions)
#   --database NAME  database to (re)create: dropped first if it exists
#   --size-mb N      wanted size in MiB, as pg_database_size() reports it
#   --psql PATH      psql to use (default: psql from PATH); use the client of
#                    the server's major version or newer
#
# Loads scripts/leaflock-schema.sql (LeafLock's tables and extensions
# uuid-ossp, pgcrypto, pg_trgm) and then scripts/leaflock-data.sql, which
# generates the rows on the server: about 80% random BYTEA "ciphertext" and
# 20% compressible JSON and text, every table non-empty, row counts scaled to
# the size. An empty LeafLock database already takes about 8 MiB (the system
# catalogs), so smaller sizes give that floor with a handful of rows.
#
# Progress goes to stderr; a summary (database size, rows per table) to
# stdout. The password in URL is never printed.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_PREFIX=generate-db
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

usage() {
    sed -n '3,14p' "$0" | sed 's/^# \{0,1\}//'
}

URL=
DATABASE=
SIZE_MB=
PSQL=psql

while (($# > 0)); do
    case $1 in
    --url) URL=${2:?--url needs a value}; shift 2 ;;
    --url=*) URL=${1#*=}; shift ;;
    --database) DATABASE=${2:?--database needs a value}; shift 2 ;;
    --database=*) DATABASE=${1#*=}; shift ;;
    --size-mb) SIZE_MB=${2:?--size-mb needs a value}; shift 2 ;;
    --size-mb=*) SIZE_MB=${1#*=}; shift ;;
    --psql) PSQL=${2:?--psql needs a value}; shift 2 ;;
    --psql=*) PSQL=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ -n $URL ]] || { usage >&2; die "--url is required"; }
[[ -n $DATABASE ]] || { usage >&2; die "--database is required"; }
[[ -n $SIZE_MB ]] || { usage >&2; die "--size-mb is required"; }
[[ $DATABASE =~ ^[A-Za-z_][A-Za-z0-9_-]{0,62}$ ]] ||
    die "--database must be 1-63 characters of letters, digits, '_' and '-', not starting with a digit or '-'"
if ! [[ $SIZE_MB =~ ^[0-9]+$ ]] || ((10#$SIZE_MB == 0)); then
    die "--size-mb must be a positive whole number"
fi
SIZE_MB=$((10#$SIZE_MB))
have "$PSQL" || die "psql not found: $PSQL"
[[ $PSQL != */* ]] || PSQL=$(realpath "$PSQL") # we cd below
for f in leaflock-schema.sql leaflock-data.sql; do
    [[ -f $SCRIPT_DIR/$f ]] || die "missing $SCRIPT_DIR/$f"
done

export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
export PGAPPNAME=leaflock-generate-db

t0=$(now_ms)
log "creating database $DATABASE of about $SIZE_MB MiB with $("$PSQL" --version)"

# One psql session, run from this directory so that \i finds the SQL files:
# drop and create the database, reconnect to it (\connect reuses the host,
# user and password of the URL), load schema and data.
cd "$SCRIPT_DIR"
rc=0
"$PSQL" "$URL" -X -q -v ON_ERROR_STOP=1 \
    -v dbname="$DATABASE" \
    -v target_bytes="$((SIZE_MB * 1048576))" \
    -f - <<'SQL' || rc=$?
SET client_min_messages = warning;
DROP DATABASE IF EXISTS :"dbname" WITH (FORCE);
CREATE DATABASE :"dbname" TEMPLATE template0 ENCODING 'UTF8';
\connect :"dbname"
\warn '[generate-db] schema'
\i leaflock-schema.sql
\i leaflock-data.sql
SQL
((rc == 0)) || die "generating database $DATABASE failed (psql exit code $rc)"

log "database $DATABASE generated in $(elapsed_since "$t0") s"
