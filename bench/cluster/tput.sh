#!/bin/bash
# Throughput of node 1 of a 2-node cluster (both nodes running, one shared
# PostgreSQL), our nodes vs the Kamailio shared-DB cluster, back to back.
#
#   tput.sh [--only node|kamailio] [--mode ha|lb] [-n KAM_CHILDREN] WORKLOAD "RATE..." REPS DURATION
#   tput.sh publish "700 2100 2800" 2 15
#   tput.sh subscribe "600 1800 2400" 2 15
#
# For each RATE, each of REPS repetitions, each cluster in turn (ours:
# nodes.sh start --mode MODE, default ha; Kamailio: kamailio.sh start): start
# the cluster fresh (database dropped and recreated), warm node 1 up for
# WARMUP_S s (default 3) at half the rate with other user names (not
# recorded), run ../load.sh 127.0.0.1 <node 1> WORKLOAD RATE RATE*DURATION,
# stop the cluster.  The PostgreSQL server (pg.sh) stays up across runs.
# CPU seconds of node 1, node 2 and PostgreSQL (postmaster and its backends)
# are recorded per run.
#
# Rows: results/cluster-tput-<time>-WORKLOAD.tsv (and results/cluster-tput.tsv,
# all runs); same columns as ../compare.sh (server_cpu_s = node 1; other_cpu_s
# = CPU of processes that are neither a cluster node, PostgreSQL nor SIPp)
# plus node2_cpu_s and pg_cpu_s.  At the end lib/cluster_table.py prints
# the side-by-side table (../lib/compare_table.py: success, throughput, holds
# = success >= 99.9 % and throughput >= 97 % of the offered rate, latency,
# node/kam ratios) and the CPU of the whole cluster per request.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
usage() { sed -n '2,24p' "$0" >&2; exit 2; }
BENCH_NAME=tput.sh
MODE=ha; KAM_N=""
bench_option() {
    case "$1" in
        --mode) MODE=$2 ;;
        -n) KAM_N=$2 ;;
        *) return 0 ;;
    esac
    return 2
}
# shellcheck source=../lib/common.sh
. "$BENCH/lib/common.sh"
bench_options "$@"
bench_rate_args
WARMUP_S=${WARMUP_S:-3}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$BENCH/results
mkdir -p "$RESULTS"
HEADER='date	server	setting	workload	rate	rep	duration_s	sent	ok	failed	success_pct	throughput	p50_ms	p90_ms	p99_ms	p99.9_ms	max_ms	notify_p50_ms	notify_p99_ms	retrans	udp_drops	server_cpu_s	node2_cpu_s	pg_cpu_s	wall_s	other_cpu_s	note	results'
bench_tables "$RESULTS/cluster-tput-$STAMP-$WORKLOAD.tsv" "$RESULTS/cluster-tput.tsv" "$HEADER"

"$HERE/pg.sh" start > /dev/null || { echo "tput.sh: PostgreSQL did not start" >&2; exit 1; }
PGPID=$("$HERE/pg.sh" status)

KAM_ARGS=(); [ -n "$KAM_N" ] && KAM_ARGS+=(-n "$KAM_N")
stop_cluster() {
    case "$1" in
        node) "$HERE/nodes.sh" stop > /dev/null 2>&1 ;;
        kamailio) "$HERE/kamailio.sh" stop > /dev/null 2>&1 ;;
    esac
}
start_cluster() { # sets P1 P2 SPORT SETTING; START_ERR on failure
    local out rc
    case "$1" in
        node) SPORT=5081; SETTING="2 nodes, $MODE, postgres"
              out=$("$HERE/nodes.sh" start --mode "$MODE" 2>&1); rc=$?
              [ $rc = 0 ] && read -r P1 P2 < <("$HERE/nodes.sh" pids) ;;
        kamailio) SPORT=5091; SETTING="2 nodes, shared-default${KAM_N:+, n$KAM_N}"
              out=$("$HERE/kamailio.sh" start "${KAM_ARGS[@]}" 2>&1); rc=$?
              [ $rc = 0 ] && read -r P1 P2 < <("$HERE/kamailio.sh" pids) ;;
    esac
    START_ERR=$(echo "$out" | tail -1 | tr '\t' ' ')
    return $rc
}
alive() { kill -0 "$P1" 2>/dev/null && kill -0 "$P2" 2>/dev/null; }
# CPU ticks of a pid and its direct children
tree_ticks() {
    local total=0 p
    for p in "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); do
        [ -r "/proc/$p/stat" ] && total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
    done
    echo $total
}
secs() { python3 -c "print(round(($2 - $1) / $(getconf CLK_TCK), 2))"; }

trap 'for s in $SERVERS; do stop_cluster $s; done' EXIT
trap 'exit 130' INT TERM
for s in $SERVERS; do stop_cluster "$s"; done

for rate in $RATES; do
    count=$(python3 -c "print(max(1, int(round($rate * $DURATION))))")
    for rep in $(seq 1 "$REPS"); do
        for srv in $SERVERS; do
            P1=""; P2=""; note=""; out=""
            if ! start_cluster "$srv"; then
                echo "tput.sh: $srv cluster did not start: $START_ERR" >&2
                bench_record "$(bench_row "$srv" "$rate" "$rep" "" "start failed: $START_ERR" "" "")"
                stop_cluster "$srv"; continue
            fi
            if [ "$WARMUP_S" -gt 0 ]; then
                wr=$(python3 -c "print(max(1, int($rate) // 2))")
                OUT_DIR=$RESULTS/cluster-warmup-$$ RUN_ID=wu$$ \
                    "$BENCH/load.sh" 127.0.0.1 "$SPORT" "$WORKLOAD" "$wr" $(( wr * WARMUP_S )) > /dev/null 2>&1 || true
                rm -rf "$RESULTS/cluster-warmup-$$"
                sleep 1
            fi
            out=$RESULTS/cluster-$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$srv-$rate-r$rep
            n2a=$(tree_ticks "$P2"); pga=$(tree_ticks "$PGPID")
            if alive; then
                SERVER_PID=$P1 OUT_DIR=$out "$BENCH/load.sh" 127.0.0.1 "$SPORT" "$WORKLOAD" "$rate" "$count" \
                    > "$out.log" 2>&1 || true
                mv "$out.log" "$out/load.log" 2>/dev/null || true
                alive || note="a node died during the run"
            else
                note="a node died during warm-up"
            fi
            n2b=$(tree_ticks "$P2"); pgb=$(tree_ticks "$PGPID")
            r=$(bench_row "$srv" "$rate" "$rep" "$out" "$note" "$(secs "$n2a" "$n2b")" "$(secs "$pga" "$pgb")")
            bench_record "$r"
            echo "$r" | awk -F'\t' '{printf "tput.sh: %-8s %s/s rep %s: success %s%% throughput %s/s p50 %s ms p99 %s ms; cpu node1 %s s node2 %s s pg %s s, others %s s %s\n", $2, $5, $6, $11, $12, $13, $15, $22, $23, $24, $26, $27}'
            if [ "$srv" = node ]; then
                for p in 5081 5082; do
                    [ -s "$BENCH/run/node-$p.log" ] && cp "$BENCH/run/node-$p.log" "$out/node-$p.log" 2>/dev/null || true
                done
            fi
            stop_cluster "$srv"
        done
    done
done
echo
python3 "$HERE/lib/cluster_table.py" "$TABLE"
echo "table: $TABLE"
