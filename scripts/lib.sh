# shellcheck shell=bash
#
# scripts/lib.sh - small helpers shared by the test-bed scripts.
#
# Source it from another script:
#     . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It only defines functions and never changes shell options of the caller.

# Prefix for progress lines; callers may override it before sourcing.
: "${LOG_PREFIX:=leaflock}"

# log MSG...: progress line on stderr (stdout stays free for real output).
log() {
    printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2
}

# warn MSG...: warning line on stderr.
warn() {
    printf '[%s] WARNING: %s\n' "$LOG_PREFIX" "$*" >&2
}

# die MSG...: error line on stderr, then exit 1.
die() {
    printf '[%s] ERROR: %s\n' "$LOG_PREFIX" "$*" >&2
    exit 1
}

# have CMD: true if CMD is on PATH (or an executable path).
have() {
    command -v "$1" >/dev/null 2>&1
}

# now_ms: wall-clock milliseconds, for timings.
now_ms() {
    date +%s%3N
}

# elapsed_since MS: seconds since MS (from now_ms), with one decimal.
elapsed_since() {
    local start=$1 end
    end=$(now_ms)
    awk -v d="$((end - start))" 'BEGIN { printf "%.1f", d / 1000 }'
}

# random_hex N: N random hex characters (lower case).
random_hex() {
    local n=$1
    od -An -vtx1 -N "$(((n + 1) / 2))" /dev/urandom | tr -d ' \n' | cut -c "1-$n"
}

# port_in_use PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_for TIMEOUT_S DESCRIPTION CMD...: run CMD every 0.25 s until it
# succeeds; return 1 if it has not succeeded after TIMEOUT_S seconds.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$(($(date +%s) + timeout))
    while true; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if (($(date +%s) >= deadline)); then
            warn "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.25
    done
}

# show_log_tail FILE [LINES]: print the end of a log file on stderr.
show_log_tail() {
    local file=$1 lines=${2:-40}
    if [[ -f $file ]]; then
        printf '[%s] ---- last %s lines of %s ----\n' "$LOG_PREFIX" "$lines" "$file" >&2
        tail -n "$lines" "$file" >&2 || true
        printf '[%s] ---- end of %s ----\n' "$LOG_PREFIX" "$file" >&2
    else
        printf '[%s] (no log file at %s)\n' "$LOG_PREFIX" "$file" >&2
    fi
}

# pid_alive PIDFILE [NAME]: true if PIDFILE names a running process (whose
# command line contains NAME, when given, to survive pid reuse).
pid_alive() {
    local pidfile=$1 name=${2:-} pid
    [[ -f $pidfile ]] || return 1
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -n $name ]]; then
        local cmdline
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
        [[ $cmdline == *"$name"* ]] || return 1
    fi
    return 0
}

# stop_pidfile PIDFILE NAME [TIMEOUT_S]: SIGTERM the process named in PIDFILE,
# wait for it to exit, SIGKILL it after TIMEOUT_S; remove PIDFILE.
stop_pidfile() {
    local pidfile=$1 name=$2 timeout=${3:-20} pid i
    if ! pid_alive "$pidfile" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$pidfile"
}

# runner_script FILE COMMAND VAR=VALUE...: write FILE, a private script that clears
# every setting the runner reads from its environment (LEAFLOCK_*, PG*, AWS_*,
# BACKUP_*, DATABASE_URL), exports the VAR=VALUE pairs and runs COMMAND (a line of
# shell, e.g. `exec /path/leaflock-backup "$@"`). Secrets in the pairs stay in the
# script's environment, never on a command line.
runner_script() {
    local file=$1 command=$2
    shift 2
    # shellcheck disable=SC2016 # what is quoted expands in the generated script
    {
        echo '#!/usr/bin/env bash'
        echo 'for v in $(compgen -e); do case $v in LEAFLOCK_* | PG* | AWS_* | BACKUP_* | DATABASE_URL) unset "$v" ;; esac; done'
        printf 'export %q\n' "$@"
        printf '%s\n' "$command"
    } >"$file"
    chmod 700 "$file"
}
