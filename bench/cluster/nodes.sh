#!/bin/bash
# Two of our presence nodes on one PostgreSQL database (the shared-database
# cluster), for the cluster benchmarks.
#
#   nodes.sh start [--mode ha|lb]     (default ha)
#   nodes.sh stop
#   nodes.sh pids                     prints "PID1 PID2"
#
#   node 1: SIP udp/tcp 127.0.0.1:5081, admin 127.0.0.1:6081, node_id n1
#   node 2: SIP udp/tcp 127.0.0.1:5082, admin 127.0.0.1:6082, node_id n2
#   ha: sharing tag vip, active on node 1, backup on node 2 (default_tag vip
#       on both: every record belongs to node 1's duties)
#   lb: tags n1 and n2, each active on its own node and the node's default_tag
#
# `start` starts the private PostgreSQL if needed (pg.sh start), drops and
# recreates database `presence` (fresh schema and data every start; the nodes
# create their schema themselves), then starts node 1, waits until it is up,
# then node 2.  Configs, DSN file and each node's state_dir go to
# bench/run/cluster/; logs to bench/run/node-5081.log and node-5082.log
# (bench/node.sh).  Log level warning; storage defaults otherwise (pool
# 2..8 connections).  Expiry minimums are lowered to 1 s (subscriptions and
# publications) so that crossnode.py can test expiry in seconds; the loads
# use Expires 3600.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
RUN=$BENCH/run/cluster
PGPORT=${PGPORT:-5434}
P1=5081; P2=5082

usage() { sed -n '2,24p' "$0" >&2; exit 2; }
CMD=${1:-}; [ -n "$CMD" ] && shift
MODE=ha
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        *) usage ;;
    esac
done
case "$MODE" in ha|lb) ;; *) usage ;; esac

write_cfg() { # i tags-yaml default_tag
    local i=$1
    mkdir -p "$RUN/node$i"
    cat > "$RUN/node$i.yaml" <<YAML
# written by bench/cluster/nodes.sh (mode $MODE)
node_id: n$i
log_level: warning
cluster_id: bench
sharing_tags: $2
default_tag: $3
state_dir: $RUN/node$i
storage:
  backend: postgres
  dsn_file: $RUN/dsn
subscription_expiry: {min: 1, default: 3600, max: 3600}
publication_expiry: {min: 1, default: 3600, max: 3600}
YAML
}

case "$CMD" in
start)
    for p in $P1 $P2; do
        if "$BENCH/node.sh" pid -p $p >/dev/null 2>&1; then
            echo "nodes.sh: a node already runs on $p; nodes.sh stop first" >&2; exit 1
        fi
    done
    "$HERE/pg.sh" start >/dev/null
    mkdir -p "$RUN"
    echo "host=127.0.0.1 port=$PGPORT user=postgres dbname=presence" > "$RUN/dsn"
    "$HERE/pg.sh" psql -d postgres -c "drop database if exists presence with (force)" >/dev/null
    "$HERE/pg.sh" psql -d postgres -c "create database presence" >/dev/null
    "$HERE/pg.sh" psql -d presence -c "create extension if not exists pg_stat_statements" >/dev/null
    if [ "$MODE" = ha ]; then
        write_cfg 1 "{vip: active}" vip
        write_cfg 2 "{vip: backup}" vip
    else
        write_cfg 1 "{n1: active}" n1
        write_cfg 2 "{n2: active}" n2
    fi
    "$BENCH/node.sh" start -p $P1 -a 6081 -c "$RUN/node1.yaml" >/dev/null
    "$BENCH/node.sh" start -p $P2 -a 6082 -c "$RUN/node2.yaml" >/dev/null
    echo "$MODE" > "$RUN/mode"
    echo "nodes.sh: mode $MODE: node 1 pid $("$BENCH/node.sh" pid -p $P1) udp/tcp 127.0.0.1:$P1, node 2 pid $("$BENCH/node.sh" pid -p $P2) udp/tcp 127.0.0.1:$P2; database presence on 127.0.0.1:$PGPORT"
    ;;
stop)
    "$BENCH/node.sh" stop -p $P2 >/dev/null || true
    "$BENCH/node.sh" stop -p $P1 >/dev/null || true
    echo "nodes.sh: nodes stopped"
    ;;
pids)
    echo "$("$BENCH/node.sh" pid -p $P1 || echo -) $("$BENCH/node.sh" pid -p $P2 || echo -)" ;;
*) usage ;;
esac
