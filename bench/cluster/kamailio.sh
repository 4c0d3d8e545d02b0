#!/bin/bash
# The Kamailio peer: a 2-node Kamailio 5.6 presence cluster on ONE shared
# PostgreSQL database (the shared peer bench's `shared-default` setup:
# publ_cache=0, subs_db_mode=3, Kamailio's defaults otherwise:
# notifier_processes=1, waitn_time=5, send_fast_notify=1, 8 workers).
#
#   kamailio.sh start [-n CHILDREN] [-A NAME=VALUE]...
#   kamailio.sh stop
#   kamailio.sh pids                  prints "PID1 PID2" (main processes)
#
#   node 1: udp+tcp 127.0.0.1:5091, node 2: udp+tcp 127.0.0.1:5092
#   run dirs bench/run/cluster-kam/node<i>/ (kamailio.pid, kamailio.log, ctl socket)
#   database `kamailio` (owner role kamailio) on the private PostgreSQL of
#   pg.sh (127.0.0.1:5434, started if needed), dropped and recreated with
#   Kamailio's schema at every start.
#   -n N     worker processes per listener (default Kamailio's 8)
#   -A N=V   define for kamailio-cluster.cfg, e.g. -A DB_UPDATE_PERIOD=5
#            -A CLEAN_PERIOD=5 (expiry within seconds) or -A NOTIFIER_PROCS=0
# stop stops exactly the pids in the pid files (TERM, KILL after 15 s).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
RUN=$BENCH/run/cluster-kam
PGPORT=${PGPORT:-5434}
ADDR=127.0.0.1
SHM_MB=${KAM_SHM_MB:-512}
PKG_MB=${KAM_PKG_MB:-32}
usage() { sed -n '2,19p' "$0" >&2; exit 2; }
CMD=${1:-}; [ -n "$CMD" ] && shift
CHILDREN=""; DEFS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) CHILDREN=$2; shift 2 ;;
        -A) DEFS+=("$2"); shift 2 ;;
        *) usage ;;
    esac
done
# shellcheck source=lib/kamnode.sh
. "$HERE/lib/kamnode.sh"
PSQL() { "$HERE/pg.sh" psql "$@"; }

start_node() { # i
    local i=$1 port=$((5090 + $1)) dir=$RUN/node$1
    mkdir -p "$dir"
    if [ -f "$dir/kamailio.pid" ] && is_alive "$(head -1 "$dir/kamailio.pid")"; then
        echo "kamailio.sh: node $i already running; kamailio.sh stop first" >&2; exit 1
    fi
    rm -f "$dir/kamailio.pid"
    local ARGS=(-f "$HERE/kamailio-cluster.cfg" -DD -E -P "$dir/kamailio.pid" -w "$dir" -Y "$dir"
          -m "$SHM_MB" -M "$PKG_MB" -A "KAM_ADDR=$ADDR" -A "KAM_PORT=$port"
          -A "DBURL=\"postgres://kamailio:kamailiorw@127.0.0.1:$PGPORT/kamailio\"")
    launch_kamailio kamailio.sh "$i" "$dir" "$port" "${ARGS[@]}"
}

case "$CMD" in
start)
    command -v kamailio >/dev/null || { echo "kamailio.sh: kamailio not installed (bench/kamailio/install.sh)" >&2; exit 2; }
    "$HERE/pg.sh" start > /dev/null
    mkdir -p "$RUN"
    if [ "$(PSQL -d postgres -c "select 1 from pg_roles where rolname='kamailio'")" != 1 ]; then
        PSQL -d postgres -c "create role kamailio login password 'kamailiorw'"
    fi
    PSQL -d postgres -c "drop database if exists kamailio with (force)" > /dev/null
    PSQL -d postgres -c "create database kamailio owner kamailio" > /dev/null
    for f in standard-create.sql presence-create.sql; do
        "$HERE/pg.sh" psql -U kamailio -d kamailio -f "/usr/share/kamailio/postgres/$f" > /dev/null
    done
    start_node 1; start_node 2
    echo "kamailio.sh: node 1 pid $(head -1 "$RUN/node1/kamailio.pid") udp/tcp $ADDR:5091, node 2 pid $(head -1 "$RUN/node2/kamailio.pid") udp/tcp $ADDR:5092, shared database kamailio on 127.0.0.1:$PGPORT ${DEFS[*]:-}${CHILDREN:+ -n $CHILDREN}"
    ;;
stop)
    for n in 2 1; do
        stop_kamailio kamailio.sh "$n" "$RUN/node$n/kamailio.pid"
    done
    echo "kamailio.sh: nodes stopped"
    ;;
pids)
    echo "$(head -1 "$RUN/node1/kamailio.pid" 2>/dev/null || echo -) $(head -1 "$RUN/node2/kamailio.pid" 2>/dev/null || echo -)" ;;
*) usage ;;
esac
