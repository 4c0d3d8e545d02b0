#!/bin/bash
# The Kamailio peer of the federation benchmarks: a 2-node Kamailio 5.6
# presence cluster replicating presentities over DMQ (the shared peer
# bench's `dmq` setup): each node its own database (kam_n1, kam_n2),
# presence enable_dmq=1, publ_cache=2 (presentities in memory),
# subs_db_mode=2 (subscriptions in memory, written back to the database
# every db_update_period), Kamailio's defaults otherwise (8 workers per
# listener, dmq num_workers 2).  Config: ../cluster/kamailio-cluster.cfg
# with -A WITH_DMQ (the DMQ parts of that file).
#
#   kamailio-dmq.sh start [--nodes "1 2"] [--keep-db] [-n CHILDREN] [-A NAME=VALUE]...
#   kamailio-dmq.sh stop  [--nodes "1 2"] [--pg]
#   kamailio-dmq.sh pids                      prints "PID1 PID2" (- if not running)
#
#   node i: udp+tcp 127.0.0.1:539i (DMQ on the same port); run dir, pid, log
#   and ctl socket in bench/run/fed-kam/node<i>/
#   PostgreSQL: a private server (initdb the first time) in
#   bench/run/fed-kam/pg/, 127.0.0.1:5435 (PGPORT), trust auth, superuser
#   postgres (run as root: initdb/pg_ctl run as the `postgres` user).  It is
#   started when needed and stopped only by `stop --pg`.
#   `start` recreates each started node's database from Kamailio's schema
#   files unless --keep-db (used to restart one node: with publ_cache=2 a
#   restarted node's presentities are gone whatever its database holds).
#   -n N     worker processes per listener (default Kamailio's 8)
#   -A N=V   define for kamailio-cluster.cfg (e.g. -A DB_UPDATE_PERIOD=5)
# stop stops exactly the pids in the pid files (TERM, KILL after 15 s).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
CFG=$BENCH/cluster/kamailio-cluster.cfg
RUN=$BENCH/run/fed-kam
PGDIR=$RUN/pg
PGPORT=${PGPORT:-5435}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -1)}
ADDR=127.0.0.1
SHM_MB=${KAM_SHM_MB:-512}
PKG_MB=${KAM_PKG_MB:-32}
usage() { sed -n '2,26p' "$0" >&2; exit 2; }
CMD=${1:-}; [ -n "$CMD" ] && shift
CHILDREN=""; DEFS=(); NODES="1 2"; KEEP_DB=0; STOP_PG=0
while [ $# -gt 0 ]; do
    case "$1" in
        -n) CHILDREN=$2; shift 2 ;;
        -A) DEFS+=("$2"); shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        --keep-db) KEEP_DB=1; shift ;;
        --pg) STOP_PG=1; shift ;;
        *) usage ;;
    esac
done
# shellcheck source=../cluster/lib/kamnode.sh
. "$HERE/../cluster/lib/kamnode.sh"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PSQL() { PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -v ON_ERROR_STOP=1 -qtA "$@"; }
pg_pid() { head -1 "$PGDIR/data/postmaster.pid" 2>/dev/null || true; }
pg_alive() { local p; p=$(pg_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && cmd_of "$p" | grep -q postgres; }

pg_start() {
    [ -x "$PGBIN/initdb" ] || { echo "kamailio-dmq.sh: PostgreSQL server binaries not found" >&2; exit 2; }
    mkdir -p "$PGDIR"
    if [ ! -s "$PGDIR/data/PG_VERSION" ]; then
        mkdir -p "$PGDIR/data"
        [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR"
        chmod 700 "$PGDIR/data"
        as_pg "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth-local=trust --auth-host=trust -E UTF8 \
            > "$PGDIR/initdb.log" 2>&1 || { echo "kamailio-dmq.sh: initdb failed" >&2; tail "$PGDIR/initdb.log" >&2; exit 1; }
    fi
    pg_alive && return 0
    as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w -t 60 \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=200" start > /dev/null
    if [ "$(PSQL -U postgres -d postgres -c "select 1 from pg_roles where rolname='kamailio'")" != 1 ]; then
        PSQL -U postgres -d postgres -c "create role kamailio login password 'kamailiorw'"
    fi
}

start_node() { # i
    local i=$1 port=$((5390 + $1)) peer=$((5390 + 3 - $1)) dir=$RUN/node$1 db=kam_n$1
    mkdir -p "$dir"
    if [ -f "$dir/kamailio.pid" ] && is_alive "$(head -1 "$dir/kamailio.pid")"; then
        echo "kamailio-dmq.sh: node $i already running; kamailio-dmq.sh stop first" >&2; exit 1
    fi
    rm -f "$dir/kamailio.pid"
    if [ "$KEEP_DB" = 0 ] || [ "$(PSQL -U postgres -d postgres -c "select 1 from pg_database where datname='$db'")" != 1 ]; then
        PSQL -U postgres -d postgres -c "drop database if exists $db with (force)" > /dev/null
        PSQL -U postgres -d postgres -c "create database $db owner kamailio" > /dev/null
        local f
        for f in standard-create.sql presence-create.sql; do
            PSQL -U kamailio -d "$db" -f "/usr/share/kamailio/postgres/$f" > /dev/null
        done
    fi
    local ARGS=(-f "$CFG" -DD -E -P "$dir/kamailio.pid" -w "$dir" -Y "$dir"
          -m "$SHM_MB" -M "$PKG_MB" -A "KAM_ADDR=$ADDR" -A "KAM_PORT=$port"
          -A "DBURL=\"postgres://kamailio:kamailiorw@127.0.0.1:$PGPORT/$db\""
          -A WITH_DMQ -A "DMQ_SELF=\"sip:$ADDR:$port\"" -A "DMQ_PEER=\"sip:$ADDR:$peer\""
          -A PUBL_CACHE=2 -A SUBS_DB_MODE=2)
    launch_kamailio kamailio-dmq.sh "$i" "$dir" "$port" "${ARGS[@]}"
}

case "$CMD" in
start)
    command -v kamailio >/dev/null || { echo "kamailio-dmq.sh: kamailio not installed (bench/kamailio/install.sh)" >&2; exit 2; }
    mkdir -p "$RUN"
    pg_start
    for n in $NODES; do start_node "$n"; done
    echo "kamailio-dmq.sh: node 1 pid $(head -1 "$RUN/node1/kamailio.pid" 2>/dev/null || echo -) udp/tcp $ADDR:5391, node 2 pid $(head -1 "$RUN/node2/kamailio.pid" 2>/dev/null || echo -) udp/tcp $ADDR:5392; DMQ, databases kam_n1/kam_n2 on 127.0.0.1:$PGPORT ${DEFS[*]:-}${CHILDREN:+ -n $CHILDREN}"
    ;;
stop)
    for n in $NODES; do
        stop_kamailio kamailio-dmq.sh "$n" "$RUN/node$n/kamailio.pid"
    done
    if [ "$STOP_PG" = 1 ] && pg_alive; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast -w -t 60 stop > /dev/null || true
    fi
    echo "kamailio-dmq.sh: stopped node(s) $NODES${STOP_PG:+}"
    ;;
pids)
    echo "$(head -1 "$RUN/node1/kamailio.pid" 2>/dev/null || echo -) $(head -1 "$RUN/node2/kamailio.pid" 2>/dev/null || echo -)" ;;
pgpid)
    pg_alive && pg_pid ;;
*) usage ;;
esac
