#!/bin/bash
# Overload: offered more than it holds, what does each server still deliver,
# and how late?  Our node (memory storage; one node on a PostgreSQL database,
# the shared-database mode) and Kamailio (one worker, memory subscriptions),
# back to back on the same SIPp script.
#
#   overload.sh [options] [WORKLOAD]          (default publish)
#
# Kamailio's peer of the memory mode is bench/kamailio (one worker, memory
# subscriptions, port -k); of the shared-database mode the shared-database
# cluster of bench/cluster/kamailio.sh (kamailio-cluster.cfg on the same
# PostgreSQL, one worker per listener, node 1 on 127.0.0.1:5091 loaded, its
# node 2 idle), so one command measures both modes for both servers.
#
# For each of our modes: its held rate (-H MODE=RATE, else found: the highest
# of PROBE_RATES that holds in a PROBE_S s run on our node, success >= 99.9 %
# and goodput >= 97 % of offered; the search stops at the first that does
# not), then for each factor and repetition: FACTOR x held offered for
# DURATION s to our node in that mode, then the same to Kamailio.  Every run
# starts a fresh server, warms it up for 3 s at half the held rate (other
# user names, not recorded), then runs load.sh.
#
# Prints one line per run and a table at the end: offered rate, goodput (2xx
# answers per second), goodput as % of the mode's held rate, p50/p99 of the
# requests answered 2xx (SIPp, request sent -> answer), share of requests
# answered 503, other failures (timeouts after SIPp's retransmissions), SIPp
# retransmissions, server CPU, CPU of other processes.  Rows go to
# results/overload-<time>.tsv.
#
# Options:
#   -m "memory shared-db"   our modes to run
#   -H MODE=RATE            held rate of MODE (repeatable); skips the search
#   -f "1.5 2"              factors of the held rate to offer
#   -d SECONDS              duration of each run (default 10)
#   -r REPS                 repetitions (default 1)
#   -p PORT / -k PORT       our node's / Kamailio's SIP port (5090 / 5091)
#   --no-kamailio           our node only
#   -b PYTHONPATH           also run, interleaved, the node found on this
#                           PYTHONPATH (e.g. an older commit's node/ from
#                           git archive) as server "base": before/after
# Environment: PROBE_RATES ("2000 2500 3000 3500 4000 4500 5000"), PROBE_S (6),
# PGPORT (5434: bench/cluster/pg.sh's server, started if down; database
# presence_overload, recreated per run), NODE_BIN (bench/node.sh's), NODE_ARGS.
# Example: overload.sh -H memory=3500 -H shared-db=2400 -d 10 publish
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,43p' "$0" >&2; exit 2; }

MODES="memory shared-db"; FACTORS="1.5 2"; DURATION=10; REPS=1
NODE_PORT=5090; KAM_PORT=5091; KAMAILIO=1; BASE=""
declare -A HELD=()
WORKLOAD=publish
while [ $# -gt 0 ]; do
    case "$1" in
        -m) MODES=$2; shift 2 ;;
        -H) HELD[${2%%=*}]=${2#*=}; shift 2 ;;
        -f) FACTORS=$2; shift 2 ;;
        -d) DURATION=$2; shift 2 ;;
        -r) REPS=$2; shift 2 ;;
        -p) NODE_PORT=$2; shift 2 ;;
        -k) KAM_PORT=$2; shift 2 ;;
        --no-kamailio) KAMAILIO=0; shift ;;
        -b) BASE=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "overload.sh: unknown option $1" >&2; usage ;;
        *) WORKLOAD=$1; shift ;;
    esac
done
[[ "$REPS" =~ ^[0-9]+$ && "$DURATION" =~ ^[0-9]+$ ]] || usage
PROBE_RATES=${PROBE_RATES:-2000 2500 3000 3500 4000 4500 5000}
PROBE_S=${PROBE_S:-6}
RESULTS=$HERE/results
RUN=$HERE/run/overload
mkdir -p "$RESULTS" "$RUN"
TABLE=$RESULTS/overload-$(date +%Y%m%d-%H%M%S).tsv
echo "date	mode	server	held	factor	rate	rep	sent	ok	goodput	goodput_pct_held	p50_ms	p99_ms	shed_503_pct	other_failed	retrans	server_cpu_s	other_cpu_s	results" > "$TABLE"

# -- servers ------------------------------------------------------------------

PGPORT=${PGPORT:-5434}; export PGPORT
pg() { "$HERE/cluster/pg.sh" psql "$@" >/dev/null; }
node_cfg() { # mode -> config path
    local cfg=$RUN/$1.yaml
    if [ "$1" = shared-db ]; then
        echo "host=127.0.0.1 port=$PGPORT user=postgres dbname=presence_overload" > "$RUN/dsn"
        printf 'log_level: warning\nstate_dir: %s\nstorage:\n  backend: postgres\n  dsn_file: %s\n' "$RUN/state" "$RUN/dsn" > "$cfg"
    else
        printf 'log_level: warning\nstate_dir: %s\nstorage:\n  backend: memory\n' "$RUN/state" > "$cfg"
    fi
    echo "$cfg"
}
stop_all() {
    "$HERE/node.sh" stop -p "$NODE_PORT" >/dev/null 2>&1
    [ "$KAMAILIO" = 1 ] && RUN_DIR=$RUN/kamailio "$HERE/kamailio/stop.sh" --keep-db >/dev/null 2>&1
    [ "$KAMAILIO" = 1 ] && [[ " $MODES " == *" shared-db "* ]] && "$HERE/cluster/kamailio.sh" stop >/dev/null 2>&1
    return 0
}
start() { # server mode -> sets SPID SPORT
    local out
    case "$1" in
        node|base)
            SPORT=$NODE_PORT
            if [ "$2" = shared-db ]; then
                "$HERE/cluster/pg.sh" start >/dev/null || return 1
                pg -d postgres -c "drop database if exists presence_overload with (force)"
                pg -d postgres -c "create database presence_overload"
            fi
            # shellcheck disable=SC2086
            out=$( ([ "$1" = base ] && export PYTHONPATH=$BASE
                    "$HERE/node.sh" start -p "$NODE_PORT" -c "$(node_cfg "$2")" ${NODE_ARGS:+-- $NODE_ARGS}) 2>&1) \
                || { echo "$out" >&2; return 1; }
            SPID=$("$HERE/node.sh" pid -p "$NODE_PORT") ;;
        kamailio)
            if [ "$2" = shared-db ]; then
                SPORT=5091
                out=$("$HERE/cluster/kamailio.sh" start -n 1 2>&1) || { echo "$out" >&2; return 1; }
                read -r SPID _ < <("$HERE/cluster/kamailio.sh" pids)
            else
                SPORT=$KAM_PORT
                out=$(RUN_DIR=$RUN/kamailio "$HERE/kamailio/start.sh" -p "$KAM_PORT" -n 1 -s 0 --db sqlite --fresh 2>&1) \
                    || { echo "$out" >&2; return 1; }
                SPID=$(head -1 "$RUN/kamailio/kamailio.pid")
            fi ;;
    esac
}
stop() { # server mode
    case "$1:$2" in
        node:*|base:*) "$HERE/node.sh" stop -p "$NODE_PORT" >/dev/null 2>&1 ;;
        kamailio:shared-db) "$HERE/cluster/kamailio.sh" stop >/dev/null 2>&1 ;;
        kamailio:*) RUN_DIR=$RUN/kamailio "$HERE/kamailio/stop.sh" --keep-db >/dev/null 2>&1 ;;
    esac
    return 0
}

# run SERVER MODE RATE WARMUP_RATE TAG SECONDS -> OUT (the load.sh result directory)
run() {
    local srv=$1 mode=$2 rate=$3 wr=$4 tag=$5 secs=$6 count
    OUT=""
    start "$srv" "$mode" || { echo "overload.sh: $srv did not start" >&2; return 1; }
    OUT_DIR=$RUN/warmup-$$ RUN_ID=wu$$ "$HERE/load.sh" 127.0.0.1 "$SPORT" "$WORKLOAD" "$wr" $(( wr * 3 )) >/dev/null 2>&1
    rm -rf "$RUN/warmup-$$"
    sleep 1
    count=$(python3 -c "print(max(1, int(round($rate * $secs))))")
    OUT=$RESULTS/overload-$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$srv-$mode-$tag-$rate
    SERVER_PID=$SPID OUT_DIR=$OUT "$HERE/load.sh" 127.0.0.1 "$SPORT" "$WORKLOAD" "$rate" "$count" > "$RUN/load.log" 2>&1
    mv "$RUN/load.log" "$OUT/load.log" 2>/dev/null
    stop "$srv" "$mode"
}

trap stop_all EXIT
trap 'exit 130' INT TERM
stop_all

for mode in $MODES; do
    held=${HELD[$mode]:-}
    if [ -z "$held" ]; then
        for rate in $PROBE_RATES; do
            run node "$mode" "$rate" $(( rate / 2 )) probe "$PROBE_S" || break
            if python3 "$HERE/lib/overload_table.py" --holds "$OUT" "$rate"; then
                held=$rate; echo "overload.sh: $mode holds $rate/s"
            else
                echo "overload.sh: $mode does not hold $rate/s"; break
            fi
        done
        [ -n "$held" ] || { echo "overload.sh: $mode holds none of $PROBE_RATES; skipped" >&2; continue; }
    fi
    for factor in $FACTORS; do
        rate=$(python3 -c "print(int(round($held * $factor)))")
        for rep in $(seq 1 "$REPS"); do
            servers="node"; [ -n "$BASE" ] && servers="$servers base"; [ "$KAMAILIO" = 1 ] && servers="$servers kamailio"
            for srv in $servers; do
                run "$srv" "$mode" "$rate" $(( held / 2 )) "x$factor" "$DURATION" || continue
                python3 "$HERE/lib/overload_table.py" --row "$OUT" "$mode" "$srv" "$held" "$factor" "$rate" "$rep" \
                    | tee -a "$TABLE" | awk -F'\t' '{printf "overload.sh: %-9s %-8s %s/s (%sx %s): goodput %s/s (%s%% of held) p50 %s ms p99 %s ms, 503 %s%%, other failures %s\n", $2, $3, $6, $5, $4, $10, $11, $12, $13, $14, $15}'
            done
        done
    done
done
echo
python3 "$HERE/lib/overload_table.py" --table "$TABLE"
echo "table: $TABLE"
