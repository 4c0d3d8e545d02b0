#!/bin/bash
# Start the Kamailio presence-server peer (and the database it needs) on loopback.
#
#   start.sh [-n CHILDREN] [-p PORT] [--db postgres|sqlite] [-D DEFINE]...
#
#   -n N        Kamailio worker processes per listener (UDP -n and TCP -N);
#               omitted = Kamailio's default (8 per listener)
#   -p PORT     SIP port on 127.0.0.1, UDP and TCP (default 5070)
#   --db KIND   postgres (default; Debian's cluster, started if it is down)
#               or sqlite (a file in the run directory, no server process)
#   -s MODE     presence subs_db_mode: 2 (default, write-back) or 0 (memory
#               only; fastest, but presence.winfo SUBSCRIBE crashes 5.6.3)
#   --fresh     empty the presence tables (presentity, active_watchers,
#               watchers) before starting, so a run starts from no state
#   -D DEFINE   extra kamailio.cfg define, e.g. -D WITH_DUMMY_PRESENCE,
#               -D WITH_DEBUG_LOG (repeatable)
#
# Environment: RUN_DIR (default: bench/run/kamailio), KAM_SHM_MB (1024),
# KAM_PKG_MB (32).
#
# Writes RUN_DIR/kamailio.pid (and RUN_DIR/postgres.pid when this script
# started PostgreSQL); stop.sh stops exactly those pids.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
RUN_DIR=${RUN_DIR:-$(cd "$HERE/.." && pwd)/run/kamailio}
PORT=5070
ADDR=127.0.0.1
CHILDREN=""
DB=postgres
SUBS_DB_MODE=2
FRESH=0
DEFINES=()
SHM_MB=${KAM_SHM_MB:-1024}
PKG_MB=${KAM_PKG_MB:-32}

while [ $# -gt 0 ]; do
    case "$1" in
        -n|--children) CHILDREN=$2; shift 2 ;;
        -p|--port) PORT=$2; shift 2 ;;
        --db) DB=$2; shift 2 ;;
        -s|--subs-db-mode) SUBS_DB_MODE=$2; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        -D|--define) DEFINES+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "start.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

mkdir -p "$RUN_DIR"
KPID_FILE=$RUN_DIR/kamailio.pid

is_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

if [ -f "$KPID_FILE" ] && is_alive "$(head -1 "$KPID_FILE")"; then
    echo "start.sh: kamailio already running (pid $(head -1 "$KPID_FILE")); run stop.sh first" >&2
    exit 1
fi
rm -f "$KPID_FILE"

start_postgres() {
    # first cluster listed by Debian's pg_lsclusters
    local line ver name status datadir pid i
    line=$(pg_lsclusters -h | awk 'NF>=6 {print $1, $2, $4, $6; exit}')
    if [ -z "$line" ]; then
        echo "start.sh: no PostgreSQL cluster found (apt-get install postgresql)" >&2
        exit 1
    fi
    read -r ver name status datadir <<<"$line"
    if [ "$status" != online ]; then
        echo "start.sh: starting PostgreSQL cluster $ver/$name"
        pg_ctlcluster "$ver" "$name" start
        pid=$(head -1 "$datadir/postmaster.pid")
        echo "$pid" > "$RUN_DIR/postgres.pid"
        echo "$ver $name $datadir" > "$RUN_DIR/postgres.cluster"
    elif [ -f "$RUN_DIR/postgres.pid" ] && [ "$(head -1 "$RUN_DIR/postgres.pid")" = "$(head -1 "$datadir/postmaster.pid" 2>/dev/null)" ]; then
        echo "start.sh: PostgreSQL cluster $ver/$name online, started earlier by start.sh (stop.sh stops it)"
    else
        rm -f "$RUN_DIR/postgres.pid" "$RUN_DIR/postgres.cluster"
        echo "start.sh: PostgreSQL cluster $ver/$name already online (left as is; stop.sh will not stop it)"
    fi
    for i in $(seq 1 50); do
        runuser -u postgres -- psql -qtAc 'select 1' >/dev/null 2>&1 && break
        sleep 0.2
    done
    # role, database and schema, created once
    if [ "$(runuser -u postgres -- psql -qtAc "select 1 from pg_roles where rolname='kamailio'")" != 1 ]; then
        runuser -u postgres -- psql -qc "create role kamailio login password 'kamailiorw'"
    fi
    if [ "$(runuser -u postgres -- psql -qtAc "select 1 from pg_database where datname='kamailio'")" != 1 ]; then
        runuser -u postgres -- createdb -O kamailio kamailio
    fi
    export PGPASSWORD=kamailiorw
    if [ -z "$(psql -h 127.0.0.1 -U kamailio -d kamailio -qtAc "select to_regclass('public.presentity')")" ]; then
        echo "start.sh: loading Kamailio schema (standard + presence) into database kamailio"
        psql -q -h 127.0.0.1 -U kamailio -d kamailio -f /usr/share/kamailio/postgres/standard-create.sql >/dev/null
        psql -q -h 127.0.0.1 -U kamailio -d kamailio -f /usr/share/kamailio/postgres/presence-create.sql >/dev/null
    fi
    if [ "$FRESH" = 1 ]; then
        psql -q -h 127.0.0.1 -U kamailio -d kamailio -c "truncate presentity, active_watchers, watchers"
    fi
    DBURL="postgres://kamailio:kamailiorw@127.0.0.1/kamailio"
}

start_sqlite() {
    local f=$RUN_DIR/kamailio.sqlite
    if [ ! -s "$f" ]; then
        sqlite3 "$f" < /usr/share/kamailio/db_sqlite/standard-create.sql
        sqlite3 "$f" < /usr/share/kamailio/db_sqlite/presence-create.sql
    fi
    if [ "$FRESH" = 1 ]; then
        sqlite3 "$f" "delete from presentity; delete from active_watchers; delete from watchers;"
    fi
    DBURL="sqlite://$f"
}

case "$DB" in
    postgres) start_postgres ;;
    sqlite) start_sqlite ;;
    *) echo "start.sh: --db must be postgres or sqlite" >&2; exit 2 ;;
esac

ARGS=(-f "$HERE/kamailio.cfg" -DD -E -P "$KPID_FILE" -w "$RUN_DIR" -Y "$RUN_DIR"
      -m "$SHM_MB" -M "$PKG_MB"
      -A "KAM_ADDR=$ADDR" -A "KAM_PORT=$PORT" -A "DBURL=\"$DBURL\""
      -A "SUBS_DB_MODE=$SUBS_DB_MODE")
if [ -n "$CHILDREN" ]; then
    ARGS+=(-n "$CHILDREN" -N "$CHILDREN")
fi
for d in "${DEFINES[@]}"; do ARGS+=(-A "$d"); done

kamailio -c "${ARGS[@]}" >"$RUN_DIR/kamailio-check.log" 2>&1 || {
    echo "start.sh: kamailio -c rejected the config:" >&2; tail -20 "$RUN_DIR/kamailio-check.log" >&2; exit 1; }

echo "start.sh: kamailio ${ARGS[*]}" > "$RUN_DIR/kamailio.cmdline"
setsid kamailio "${ARGS[@]}" >"$RUN_DIR/kamailio.log" 2>&1 </dev/null &

for i in $(seq 1 100); do
    if [ -s "$KPID_FILE" ] && ss -Hlun "sport = :$PORT" | grep -q "$ADDR:$PORT"; then
        break
    fi
    sleep 0.1
done
if ! [ -s "$KPID_FILE" ] || ! is_alive "$(head -1 "$KPID_FILE")"; then
    echo "start.sh: kamailio did not start; log:" >&2
    tail -30 "$RUN_DIR/kamailio.log" >&2
    exit 1
fi
sleep 0.5
nproc_k=$(ps -o pid= --ppid "$(head -1 "$KPID_FILE")" | wc -l)
echo "start.sh: kamailio pid $(head -1 "$KPID_FILE") (+$nproc_k child processes) on udp/tcp $ADDR:$PORT, children=${CHILDREN:-default(8)}, subs_db_mode=$SUBS_DB_MODE, db=$DB, log $RUN_DIR/kamailio.log"
