#!/bin/bash
# The same load on our node and on Kamailio, back to back, and a side-by-side
# table.
#
#   compare.sh [options] WORKLOAD "RATE..." REPS DURATION
#
# For each RATE and each of REPS repetitions, for each server in turn (node,
# then Kamailio): start a fresh server (empty state), warm it up for
# WARMUP_S s (default 3) at half the rate with other user names (not
# recorded), run `load.sh ... WORKLOAD RATE RATE*DURATION` with the server's
# pid for CPU accounting, stop the server.  One row per run goes to
# results/compare-<time>-WORKLOAD.tsv (and is appended to results/compare.tsv);
# at the end lib/compare_table.py prints, per rate and server, the success %
# (lowest run), median throughput, how many runs hold, median p50/p99
# latency, server CPU, and the node/Kamailio ratios.  A rate holds when
# success >= 99.9 % and throughput >= 97 % of the offered rate.
#
# WORKLOAD: any of load.sh's (options, publish, subscribe, dialog-publish, ...).
# Options:
#   -p PORT        node SIP port (default 5080; admin PORT+1000)
#   -c FILE        node config (default bench/node-bench.yaml)
#   -n N           Kamailio workers per listener (default 1)
#   -s MODE        Kamailio subs_db_mode (default 0 = memory only, like the node)
#   -k PORT        Kamailio port (default 5070)
#   --only node|kamailio   run one server only
# Environment: WARMUP_S (3), NODE_ARGS (extra presence-node args, word-split),
# TRANSPORT and the other load.sh knobs.
# Example: compare.sh publish "3000 4000" 3 15
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,28p' "$0" >&2; exit 2; }

BENCH=$HERE; BENCH_NAME=compare.sh
NODE_PORT=5080; NODE_CFG=""; KAM_N=1; KAM_S=0; KAM_PORT=5070
bench_option() {
    case "$1" in
        -p) NODE_PORT=$2 ;;
        -c) NODE_CFG=$2 ;;
        -n) KAM_N=$2 ;;
        -s) KAM_S=$2 ;;
        -k) KAM_PORT=$2 ;;
        *) return 0 ;;
    esac
    return 2
}
# shellcheck source=lib/common.sh
. "$HERE/lib/common.sh"
bench_options "$@"
bench_rate_args
WARMUP_S=${WARMUP_S:-3}

STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$HERE/results
mkdir -p "$RESULTS"
HEADER='date	server	setting	workload	rate	rep	duration_s	sent	ok	failed	success_pct	throughput	p50_ms	p90_ms	p99_ms	p99.9_ms	max_ms	notify_p50_ms	notify_p99_ms	retrans	udp_drops	server_cpu_s	wall_s	other_cpu_s	note	results'
bench_tables "$RESULTS/compare-$STAMP-$WORKLOAD.tsv" "$RESULTS/compare.tsv" "$HEADER"

NODE_START=(-p "$NODE_PORT")
[ -n "$NODE_CFG" ] && NODE_START+=(-c "$NODE_CFG")
# shellcheck disable=SC2206
[ -n "${NODE_ARGS:-}" ] && NODE_START+=(-- $NODE_ARGS)
KAM_START=(-p "$KAM_PORT" -s "$KAM_S" --fresh)
[ -n "$KAM_N" ] && [ "$KAM_N" != default ] && KAM_START+=(-n "$KAM_N")

stop_server() { # server
    case "$1" in
        node) "$HERE/node.sh" stop -p "$NODE_PORT" >/dev/null 2>&1 ;;
        kamailio) "$HERE/kamailio/stop.sh" --keep-db >/dev/null 2>&1 ;;
    esac
}
# start_server SERVER: sets SPID, SPORT, SETTING; returns non-zero (with the
# reason in START_ERR) when it does not start
start_server() {
    local out rc
    case "$1" in
        node)
            SPORT=$NODE_PORT; SETTING="node"
            out=$("$HERE/node.sh" start "${NODE_START[@]}" 2>&1); rc=$?
            [ $rc = 0 ] && SPID=$("$HERE/node.sh" pid -p "$NODE_PORT") ;;
        kamailio)
            SPORT=$KAM_PORT; SETTING="n${KAM_N}-s${KAM_S}"
            out=$("$HERE/kamailio/start.sh" "${KAM_START[@]}" 2>&1); rc=$?
            [ $rc = 0 ] && SPID=$(head -1 "$HERE/run/kamailio/kamailio.pid") ;;
    esac
    START_ERR=$(echo "$out" | tail -1 | tr '\t' ' ')
    return $rc
}
server_alive() { [ -n "${SPID:-}" ] && kill -0 "$SPID" 2>/dev/null; }

trap 'for s in $SERVERS; do stop_server $s; done' EXIT
trap 'exit 130' INT TERM
for s in $SERVERS; do stop_server "$s"; done

for rate in $RATES; do
    count=$(python3 -c "print(max(1, int(round($rate * $DURATION))))")
    for rep in $(seq 1 "$REPS"); do
        for srv in $SERVERS; do
            SPID=""; note=""; out=""
            if ! start_server "$srv"; then
                note="start failed: $START_ERR"
                echo "compare.sh: $srv did not start: $START_ERR" >&2
                bench_record "$(bench_row "$srv" "$rate" "$rep" "" "$note")"
                stop_server "$srv"
                continue
            fi
            if [ "$WARMUP_S" -gt 0 ]; then
                wr=$(python3 -c "print(max(1, int($rate) // 2))")
                OUT_DIR=$RESULTS/warmup-$srv-$$ RUN_ID=wu$$ \
                    "$HERE/load.sh" 127.0.0.1 "$SPORT" "$WORKLOAD" "$wr" $(( wr * WARMUP_S )) >/dev/null 2>&1 || true
                rm -rf "$RESULTS/warmup-$srv-$$"
                sleep 1
            fi
            out=$RESULTS/compare-$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$srv-$rate-r$rep
            if server_alive; then
                SERVER_PID=$SPID OUT_DIR=$out "$HERE/load.sh" 127.0.0.1 "$SPORT" "$WORKLOAD" "$rate" "$count" \
                    > "$out.log" 2>&1 || true
                mv "$out.log" "$out/load.log" 2>/dev/null || true
                server_alive || note="server died during run"
            else
                note="server died during warm-up"
            fi
            r=$(bench_row "$srv" "$rate" "$rep" "$out" "$note")
            bench_record "$r"
            echo "$r" | awk -F'\t' '{printf "compare.sh: %-8s %s/s rep %s: success %s%% throughput %s/s p50 %s ms p99 %s ms cpu %s s, other processes %s s %s\n", $2, $5, $6, $11, $12, $13, $15, $22, $24, $25}'
            stop_server "$srv"
        done
    done
done
echo
python3 "$HERE/lib/compare_table.py" "$TABLE"
echo "table: $TABLE"
