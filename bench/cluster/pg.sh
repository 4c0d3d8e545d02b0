#!/bin/bash
# A private PostgreSQL server for the cluster benchmarks.
#
#   pg.sh start      initdb (first time) + start; creates database `presence`
#   pg.sh stop       fast shutdown (pid file only)
#   pg.sh status     prints the pid, exit 1 if not running
#   pg.sh psql [psql args...]   psql as the superuser postgres
#
# Debian's binaries (/usr/lib/postgresql/<newest>/bin); data in
# bench/run/cluster-pg/data, log bench/run/cluster-pg/postgres.log, socket in
# bench/run/cluster-pg/, TCP 127.0.0.1:PGPORT (default 5434), trust auth on
# loopback, user postgres.  As root, initdb and the server run as the
# `postgres` system user (runuser), as initdb refuses root.
#
# Durability is left as in production: fsync, synchronous_commit and
# full_page_writes keep their defaults (on).  Only pg_stat_statements is
# added (shared_preload_libraries) so that roundtrips.py can count statements,
# track_wal_io_timing=on (WAL flush time in pg_stat_wal) and max_connections=200.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
PGROOT=$BENCH/run/cluster-pg
PGDATA=$PGROOT/data
PGPORT=${PGPORT:-5434}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "pg.sh: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 2; }

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_pg() { PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
pid_of() { head -1 "$PGDATA/postmaster.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of); [ -n "$p" ] && kill -0 "$p" 2>/dev/null && tr '\0' ' ' < "/proc/$p/cmdline" | grep -q postgres; }

case "${1:-}" in
start)
    mkdir -p "$PGROOT"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        mkdir -p "$PGDATA"
        [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGROOT"
        chmod 700 "$PGDATA"
        as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth-local=trust --auth-host=trust -E UTF8 \
            > "$PGROOT/initdb.log" 2>&1 || { echo "pg.sh: initdb failed:" >&2; tail "$PGROOT/initdb.log" >&2; exit 1; }
    fi
    if alive; then
        echo "pg.sh: PostgreSQL already running (pid $(pid_of)) on 127.0.0.1:$PGPORT"
    else
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGROOT/postgres.log" -w -t 60 \
            -o "-p $PGPORT -k $PGROOT -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c track_wal_io_timing=on" \
            start > /dev/null
        echo "pg.sh: PostgreSQL pid $(pid_of) on 127.0.0.1:$PGPORT (data $PGDATA, fsync $(psql_pg -d postgres -c 'show fsync'), synchronous_commit $(psql_pg -d postgres -c 'show synchronous_commit'))"
    fi
    if [ "$(psql_pg -d postgres -c "select 1 from pg_database where datname='presence'")" != 1 ]; then
        psql_pg -d postgres -c "create database presence"
    fi
    psql_pg -d presence -c "create extension if not exists pg_stat_statements" >/dev/null
    ;;
stop)
    if alive; then
        p=$(pid_of)
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop > /dev/null || kill -INT "$p"
        echo "pg.sh: PostgreSQL $p stopped"
    else
        echo "pg.sh: PostgreSQL not running"
    fi
    ;;
status)
    if alive; then pid_of; else exit 1; fi ;;
psql)
    shift; psql_pg "$@" ;;
*) sed -n '2,19p' "$0" >&2; exit 2 ;;
esac
