#!/bin/bash
# Start / stop our presence node for benchmarking (background, pid file).
#
#   node.sh start [-p PORT] [-a ADMIN_PORT] [-c CONFIG] [extra presence-node args...]
#   node.sh stop  [-p PORT]
#   node.sh pid   [-p PORT]      # prints the pid of the running node (exit 1 if none)
#
#   -p PORT   SIP port on 127.0.0.1, UDP and TCP (default 5080; Kamailio uses 5070)
#   -a PORT   admin HTTP port on 127.0.0.1 (default PORT+1000)
#   -c FILE   node config (default NODE_CONFIG or bench/node-bench.yaml:
#             memory storage, log level warning)
#
# Runs `.venv/bin/presence-node --sip 127.0.0.1:PORT --admin 127.0.0.1:APORT
# --config FILE [extra args]` in its own session, with its output in
# bench/run/node-PORT.log and its pid in bench/run/node-PORT.pid; `start`
# returns once the node's UDP socket is bound (NODE_START_TIMEOUT s, default
# 30).  `stop` stops exactly that pid (TERM, then KILL after 10 s).  Runs
# scripts/setup.sh first if .venv/bin/presence-node is missing.  NODE_BIN=path
# runs another executable named presence-node (e.g. a stand-in) instead.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RUN=$HERE/run
NODE_BIN=${NODE_BIN:-$ROOT/.venv/bin/presence-node}

usage() { sed -n '2,19p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
CMD=$1; shift
PORT=5080; APORT=""; CONFIG=${NODE_CONFIG:-$HERE/node-bench.yaml}
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -p|--port) PORT=$2; shift 2 ;;
        -a|--admin-port) APORT=$2; shift 2 ;;
        -c|--config) CONFIG=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; EXTRA+=("$@"); break ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "node.sh: bad port $PORT" >&2; exit 2; }
APORT=${APORT:-$(( PORT + 1000 ))}
PIDF=$RUN/node-$PORT.pid
LOG=$RUN/node-$PORT.log
mkdir -p "$RUN"

is_ours() { # pid: alive and a presence-node
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null \
        && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q presence-node
}
running_pid() { local p; p=$(head -1 "$PIDF" 2>/dev/null || true); is_ours "$p" && echo "$p"; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q "127.0.0.1:$1\|0.0.0.0:$1\|\*:$1"; }

case "$CMD" in
start)
    if p=$(running_pid); then
        echo "node.sh: node already running on port $PORT (pid $p); node.sh stop -p $PORT first" >&2; exit 1
    fi
    rm -f "$PIDF"
    if udp_bound "$PORT"; then
        echo "node.sh: UDP port $PORT is already in use by another process" >&2; exit 1
    fi
    [ -x "$NODE_BIN" ] || "$ROOT/scripts/setup.sh"
    [ -x "$NODE_BIN" ] || { echo "node.sh: $NODE_BIN missing after setup" >&2; exit 1; }
    [ -f "$CONFIG" ] || { echo "node.sh: config $CONFIG not found" >&2; exit 1; }
    ARGS=(--sip "127.0.0.1:$PORT" --admin "127.0.0.1:$APORT" --config "$CONFIG" "${EXTRA[@]}")
    echo "$NODE_BIN ${ARGS[*]}" > "$RUN/node-$PORT.cmdline"
    cd "$ROOT"
    setsid "$NODE_BIN" "${ARGS[@]}" >"$LOG" 2>&1 </dev/null &
    pid=$!
    echo "$pid" > "$PIDF"
    deadline=$(( $(date +%s) + ${NODE_START_TIMEOUT:-30} ))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "node.sh: node exited during start-up; log $LOG:" >&2
            tail -30 "$LOG" >&2; rm -f "$PIDF"; exit 1
        fi
        udp_bound "$PORT" && break
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "node.sh: node (pid $pid) did not bind UDP 127.0.0.1:$PORT within ${NODE_START_TIMEOUT:-30} s; log $LOG:" >&2
            tail -30 "$LOG" >&2
            kill -TERM "$pid" 2>/dev/null || true; rm -f "$PIDF"; exit 1
        fi
        sleep 0.1
    done
    sleep 0.3
    echo "node.sh: presence-node pid $pid on udp/tcp 127.0.0.1:$PORT, admin 127.0.0.1:$APORT, config $CONFIG, log $LOG"
    ;;
stop)
    p=$(head -1 "$PIDF" 2>/dev/null || true)
    if [ -z "$p" ]; then echo "node.sh: no $PIDF"; exit 0; fi
    if is_ours "$p"; then
        kill -TERM "$p"
        for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then
            echo "node.sh: node $p did not exit on TERM within 10 s, sending KILL" >&2
            kill -KILL "$p" 2>/dev/null || true
        fi
        echo "node.sh: node $p stopped"
    else
        echo "node.sh: node pid $p not running"
    fi
    rm -f "$PIDF"
    ;;
pid)
    running_pid || exit 1 ;;
*) usage ;;
esac
