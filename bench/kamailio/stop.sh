#!/bin/bash
# Stop what start.sh started, by pid file only:
#   RUN_DIR/kamailio.pid  - Kamailio main process (it stops its own children;
#                           any child of that pid still alive after it is
#                           then killed by its own pid)
#   RUN_DIR/postgres.pid  - the PostgreSQL postmaster, only if start.sh
#                           started the cluster (fast shutdown)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN_DIR=${RUN_DIR:-$(cd "$HERE/.." && pwd)/run/kamailio}
KEEP_DB=0
[ "${1:-}" = "--keep-db" ] && KEEP_DB=1

is_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
cmd_of() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null; }

wait_gone() { # pid seconds
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do is_alive "$1" || return 0; sleep 0.1; done
    return 1
}

KPID_FILE=$RUN_DIR/kamailio.pid
if [ -f "$KPID_FILE" ]; then
    pid=$(head -1 "$KPID_FILE")
    if is_alive "$pid" && cmd_of "$pid" | grep -q kamailio; then
        kids=$(ps -o pid= --ppid "$pid" | tr -d ' ')
        kill -TERM "$pid"
        if ! wait_gone "$pid" 15; then
            echo "stop.sh: kamailio $pid did not exit on TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null
            wait_gone "$pid" 5
        fi
        for k in $kids; do
            if is_alive "$k" && cmd_of "$k" | grep -q kamailio; then
                kill -KILL "$k" 2>/dev/null
            fi
        done
        echo "stop.sh: kamailio $pid stopped"
    else
        echo "stop.sh: kamailio pid $pid not running"
    fi
    rm -f "$KPID_FILE"
else
    echo "stop.sh: no $KPID_FILE"
fi

PPID_FILE=$RUN_DIR/postgres.pid
if [ "$KEEP_DB" = 0 ] && [ -f "$PPID_FILE" ]; then
    pid=$(head -1 "$PPID_FILE")
    if is_alive "$pid" && cmd_of "$pid" | grep -q postgres; then
        kill -INT "$pid"     # PostgreSQL 'fast' shutdown
        if wait_gone "$pid" 30; then
            echo "stop.sh: postgres $pid stopped"
        else
            echo "stop.sh: postgres $pid still running after 30 s" >&2
        fi
    else
        echo "stop.sh: postgres pid $pid not running"
    fi
    rm -f "$PPID_FILE" "$RUN_DIR/postgres.cluster"
fi
exit 0
