#!/bin/bash
# Throughput of node 1 of a 2-node federation, ours (two presence-node
# processes, memory storage, each its own location) vs Kamailio's 2-node DMQ
# cluster, back to back, with the peer node running and doing its part.
#
#   tput.sh [--only node|kamailio] [--mode on-demand-sharing|full-sharing|shared-db] [-n KAM_CHILDREN] [--no-wait]
#           WORKLOAD "RATE..." REPS DURATION
#   tput.sh publish "1500 2500" 1 10
#   tput.sh subscribe "1000 1500" 1 10
#
# WORKLOAD
#   publish    N = RATE*DURATION presentities.  First N watchers SUBSCRIBE
#              through node 2, one per presentity (SIPp, watch_hold.xml, at
#              WATCH_RATE/s, default 800), and stay in their dialogs; then
#              the measured load: ../load.sh publish through node 1 (initial
#              PUBLISH of each presentity).  Every PUBLISH is thus cross-node
#              traffic: node 1 sends it to node 2 (ours: interest; Kamailio:
#              DMQ replicates every PUBLISH anyway), and node 2 NOTIFYs its
#              watcher.  "delivered" = watchers that got that NOTIFY (with
#              <basic>open</basic>) within DRAIN_S s (default 15) after the load.
#   subscribe  First N presentities are PUBLISHed through node 2 (../load.sh
#              publish at PRELOAD_RATE/s, default 1000); then the measured
#              load: ../load.sh subscribe through node 1 to those
#              presentities (SUBSCRIBE, 2xx and initial NOTIFY).  Ours on
#              demand: node 1 holds nothing of them and queries node 2 (the
#              initial NOTIFY waits up to query_wait for the answer); full
#              sharing and Kamailio DMQ: node 1 has the replicated copy.
#
# --mode shared-db runs the same workloads on the shared-database clusters
# of ../cluster/ instead (ours: ../cluster/nodes.sh, HA, one PostgreSQL;
# Kamailio: ../cluster/kamailio.sh): node 1 finds node 2's watchers in the
# database and NOTIFYs them itself (the BLF case: a PUBLISH with a watcher
# subscribed through the other node).
#
# For each RATE, repetition and cluster (ours: nodes.sh start --mode MODE,
# default on-demand-sharing; Kamailio: kamailio-dmq.sh start): wait until the
# machine is quiet (quiet.py: no sipp/kamailio/presence-node that is not
# ours, 1-minute load average < 0.8, polled every 10 s, gives up after 40 min
# and runs anyway, noted in the row; --no-wait skips this for trial runs),
# start the cluster fresh, prepare as above, warm node 1 up for WARMUP_S s
# (default 3) at half the rate with other names (not recorded), run the
# load, stop the cluster.  A rate holds when success >= 99.9 % and
# throughput >= 97 % of the offered rate (and, for publish, we also report
# the delivered cross-node NOTIFYs).
#
# Ports: ours 5301/5302, Kamailio 5391/5392 (PostgreSQL 5435 for its
# per-node databases).  Rows: results/fed-tput-<time>-WORKLOAD.tsv and
# results/fed-tput.tsv (all runs); per run results/fed-<time>-WORKLOAD-
# <server>-<rate>-r<rep>/ (load.sh output, watcher SIPp output, node logs).
# CPU seconds of node 1 (load.sh server_cpu_s), node 2, the watcher SIPp and
# (Kamailio) PostgreSQL are recorded; others_cpu_s is what remains of the
# machine's busy time.  At the end the table of fedtable.py.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
usage() { sed -n '2,52p' "$0" >&2; exit 2; }
BENCH_NAME=tput.sh
MODE=on-demand-sharing; KAM_N=""; NOWAIT=0
bench_option() {
    case "$1" in
        --mode) MODE=$2; return 2 ;;
        -n) KAM_N=$2; return 2 ;;
        --no-wait) NOWAIT=1; return 1 ;;
    esac
    return 0
}
# shellcheck source=../lib/common.sh
. "$BENCH/lib/common.sh"
bench_options "$@"
bench_rate_args
case "$WORKLOAD" in publish|subscribe) ;; *) usage ;; esac
case "$MODE" in on-demand-sharing|full-sharing|shared-db) ;; *) usage ;; esac
WARMUP_S=${WARMUP_S:-3}; WATCH_RATE=${WATCH_RATE:-800}; PRELOAD_RATE=${PRELOAD_RATE:-1000}; DRAIN_S=${DRAIN_S:-15}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$BENCH/results
mkdir -p "$RESULTS"
HEADER='date	server	setting	workload	rate	rep	duration_s	sent	ok	failed	success_pct	throughput	p50_ms	p90_ms	p99_ms	p99.9_ms	max_ms	notify_p50_ms	notify_p99_ms	retrans	udp_drops	node1_cpu_s	node2_cpu_s	watcher_cpu_s	pg_cpu_s	wall_s	others_cpu_s	watchers	delivered	load1_before	waited_s	note	results'
bench_tables "$RESULTS/fed-tput-$STAMP-$WORKLOAD.tsv" "$RESULTS/fed-tput.tsv" "$HEADER"

KAM_ARGS=(); [ -n "$KAM_N" ] && KAM_ARGS+=(-n "$KAM_N")
WPID=""
stop_cluster() {
    case "$1:$MODE" in
        node:shared-db) "$BENCH/cluster/nodes.sh" stop > /dev/null 2>&1 ;;
        kamailio:shared-db) "$BENCH/cluster/kamailio.sh" stop > /dev/null 2>&1 ;;
        node:*) "$HERE/nodes.sh" stop > /dev/null 2>&1 ;;
        kamailio:*) "$HERE/kamailio-dmq.sh" stop > /dev/null 2>&1 ;;
    esac
}
stop_watchers() { # the watcher SIPp (if still running), then its waiting subshell
    local k
    if [ -n "$WPID" ] && kill -0 "$WPID" 2>/dev/null; then
        for k in $(ps -o pid= --ppid "$WPID"); do kill -TERM "$k" 2>/dev/null || true; done
        sleep 1
        for k in $(ps -o pid= --ppid "$WPID"); do kill -KILL "$k" 2>/dev/null || true; done
        kill -TERM "$WPID" 2>/dev/null || true
    fi
    WPID=""
}
start_cluster() { # sets P1 P2 PORT1 PORT2 PGPID SETTING; START_ERR on failure
    local out rc
    PGPID=""
    case "$1:$MODE" in
        node:shared-db) PORT1=5081; PORT2=5082; SETTING="2 nodes, ha, postgres"
              out=$("$BENCH/cluster/nodes.sh" start --mode ha 2>&1); rc=$?
              if [ $rc = 0 ]; then
                  read -r P1 P2 < <("$BENCH/cluster/nodes.sh" pids); PGPID=$("$BENCH/cluster/pg.sh" status)
              fi ;;
        kamailio:shared-db) PORT1=5091; PORT2=5092; SETTING="2 nodes, shared-default${KAM_N:+, n$KAM_N}"
              out=$("$BENCH/cluster/kamailio.sh" start "${KAM_ARGS[@]}" 2>&1); rc=$?
              if [ $rc = 0 ]; then
                  read -r P1 P2 < <("$BENCH/cluster/kamailio.sh" pids); PGPID=$("$BENCH/cluster/pg.sh" status)
              fi ;;
        node:*) PORT1=5301; PORT2=5302; SETTING="2 locations, $MODE, memory"
              out=$("$HERE/nodes.sh" start --mode "$MODE" 2>&1); rc=$?
              [ $rc = 0 ] && read -r P1 P2 < <("$HERE/nodes.sh" pids) ;;
        kamailio:*) PORT1=5391; PORT2=5392; SETTING="2 nodes, dmq${KAM_N:+, n$KAM_N}"
              out=$("$HERE/kamailio-dmq.sh" start "${KAM_ARGS[@]}" 2>&1); rc=$?
              if [ $rc = 0 ]; then
                  read -r P1 P2 < <("$HERE/kamailio-dmq.sh" pids); PGPID=$("$HERE/kamailio-dmq.sh" pgpid || true)
                  sleep 3   # DMQ nodes find each other
              fi ;;
    esac
    START_ERR=$(echo "$out" | tail -1 | tr '\t' ' ')
    return $rc
}
alive() { kill -0 "$P1" 2>/dev/null && kill -0 "$P2" 2>/dev/null; }
tree_ticks() { # CPU ticks of a pid (with its reaped children) and its direct children
    local total=0 p
    [ -n "${1:-}" ] || { echo 0; return; }
    [ -r "/proc/$1/stat" ] && total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat")
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        [ -r "/proc/$p/stat" ] && total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
    done
    echo $total
}
secs() { python3 -c "print(round(($2 - $1) / $(getconf CLK_TCK), 2))"; }
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# watchers through node 2 (publish workload), SIPp in the background: $1 dir, $2 prefix, $3 count
start_watchers() {
    local dir=$1 pfx=$2 n=$3 lport tmo
    mkdir -p "$dir"; cp "$HERE/watch_hold.xml" "$dir/"
    lport=$(free_port)
    tmo=$(( n / WATCH_RATE + WARMUP_S + DURATION + DRAIN_S + 30 ))
    # the subshell waits for SIPp, then stays (sleep) so that SIPp's CPU stays
    # readable in its cutime/cstime after SIPp exited (tree_ticks)
    ( cd "$dir" && sipp "127.0.0.1:$PORT2" -sf watch_hold.xml -m "$n" -r "$WATCH_RATE" -rp 1000 -l "$(( n + 10 ))" \
        -t u1 -i 127.0.0.1 -p "$lport" -nostdin -buff_size 4194304 -default_behaviors all,-bye \
        -recv_timeout "$(( tmo * 1000 ))" -timeout "$(( tmo + 10 ))s" \
        -trace_stat -stf stat.csv -fd 1 -trace_counts -trace_err -error_file errors.log \
        -key pres_domain 127.0.0.1 -key expires 3600 -key pres_prefix "$pfx" -key watcher_prefix "fw$$-" \
        > screen.log 2>&1; echo $? > sipp.rc; exec sleep 100000 ) &
    WPID=$!
}
stat_col() { # dir column -> last value of that stat.csv column
    python3 - "$1/stat.csv" "$2" <<'PY'
import sys
try:
    lines = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    print(lines[-1][lines[0].index(sys.argv[2])])
except Exception:
    print("")
PY
}
wait_subscribed() { # dir n: until SIPp created all n watcher calls and none is still before its initial NOTIFY (approx.: +2 s)
    local dir=$1 n=$2 deadline created
    deadline=$(( $(date +%s) + n / WATCH_RATE + 60 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        created=$(stat_col "$dir" "TotalCallCreated")
        [ "${created:-0}" -ge "$n" ] 2>/dev/null && break
        sleep 1
    done
    sleep 3
}

trap 'stop_watchers; for s in $SERVERS; do stop_cluster $s; done' EXIT
trap 'exit 130' INT TERM
for s in $SERVERS; do stop_cluster "$s"; done

for rate in $RATES; do
    count=$(python3 -c "print(max(1, int(round($rate * $DURATION))))")
    for rep in $(seq 1 "$REPS"); do
        for srv in $SERVERS; do
            P1=""; P2=""; note=""; out=""; nw=""; dl=""; WPID=""
            if [ "$NOWAIT" = 1 ]; then
                load=$(cut -d' ' -f1 /proc/loadavg); waited=0; note="no quiet wait (trial)"
            else
                q=$(python3 "$HERE/quiet.py" --root $$ --json 2>/dev/null); qrc=$?
                load=$(echo "$q" | python3 -c 'import json,sys; print(json.load(sys.stdin)["load"][0])')
                waited=$(echo "$q" | python3 -c 'import json,sys; print(json.load(sys.stdin)["waited_s"])')
                [ $qrc = 3 ] && note="machine busy: gave up waiting after 40 min"
                echo "tput.sh: quiet: load $load after $waited s${note:+ ($note)}"
            fi
            if ! start_cluster "$srv"; then
                echo "tput.sh: $srv cluster did not start: $START_ERR" >&2
                bench_record "$(bench_row "$srv" "$rate" "$rep" "" "start failed: $START_ERR" "" "" "" -- "" "" "$load" "$waited")"
                stop_cluster "$srv"; continue
            fi
            out=$RESULTS/fed-$(date +%Y%m%d-%H%M%S)-$WORKLOAD-$srv-$rate-r$rep
            mkdir -p "$out"
            PFX=f$(date +%H%M%S)$$-
            if [ "$WORKLOAD" = publish ]; then
                nw=$count
                start_watchers "$out/watchers" "$PFX" "$count"
                wait_subscribed "$out/watchers" "$count"
                wf=$(stat_col "$out/watchers" "FailedCall(C)")
                [ "${wf:-0}" != 0 ] && note="$wf watcher SUBSCRIBEs failed before the load"
            else
                OUT_DIR=$out/preload RUN_ID=pl$$ PRES_PREFIX=$PFX \
                    "$BENCH/load.sh" 127.0.0.1 "$PORT2" publish "$PRELOAD_RATE" "$count" > "$out/preload.log" 2>&1 || true
                pre=$(python3 -c "import json; print(json.load(open('$out/preload/summary.json'))['roles']['main']['calls_ok'])" 2>/dev/null || echo 0)
                [ "$pre" != "$count" ] && note="preload: $pre of $count PUBLISHes through node 2 ok"
                sleep 2
            fi
            if [ "$WARMUP_S" -gt 0 ]; then
                wr=$(python3 -c "print(max(1, int($rate) // 2))")
                OUT_DIR=$out/warmup RUN_ID=wu$$ \
                    "$BENCH/load.sh" 127.0.0.1 "$PORT1" "$WORKLOAD" "$wr" $(( wr * WARMUP_S )) > /dev/null 2>&1 || true
                rm -rf "$out/warmup"
                sleep 1
            fi
            n2a=$(tree_ticks "$P2"); wa=$(tree_ticks "$WPID"); pga=$(tree_ticks "$PGPID")
            if alive; then
                SERVER_PID=$P1 OUT_DIR=$out PRES_PREFIX=$PFX "$BENCH/load.sh" 127.0.0.1 "$PORT1" "$WORKLOAD" "$rate" "$count" \
                    > "$out/load.log" 2>&1 || true
                alive || note="${note:+$note; }a node died during the run"
            else
                note="${note:+$note; }a node died before the run"
            fi
            n2b=$(tree_ticks "$P2"); wb=$(tree_ticks "$WPID"); pgb=$(tree_ticks "$PGPID")
            if [ "$WORKLOAD" = publish ]; then
                for _ in $(seq 1 "$DRAIN_S"); do [ -s "$out/watchers/sipp.rc" ] && break; sleep 1; done
                [ -s "$out/watchers/sipp.rc" ] || sleep 1.2   # SIPp still running: its next stat.csv dump (-fd 1)
                dl=$(stat_col "$out/watchers" "SuccessfulCall(C)")
                stop_watchers
            fi
            r=$(bench_row "$srv" "$rate" "$rep" "$out" "$note" "$(secs "$n2a" "$n2b")" "$(secs "$wa" "$wb")" \
                    "$([ -n "$PGPID" ] && secs "$pga" "$pgb")" -- "$nw" "$dl" "$load" "$waited")
            bench_record "$r"
            echo "$r" | awk -F'\t' '{printf "tput.sh: %-8s %s/s rep %s: success %s%% throughput %s/s p50 %s ms p99 %s ms notify p50 %s p99 %s; delivered %s/%s; cpu node1 %s s node2 %s s watchers %s s pg %s s others %s s; load before %s %s\n", $2, $5, $6, $11, $12, $13, $15, $18, $19, $29, $28, $22, $23, $24, $25, $27, $30, $32}'
            if [ "$srv" = node ]; then
                for p in "$PORT1" "$PORT2"; do cp "$BENCH/run/node-$p.log" "$out/" 2>/dev/null || true; done
            else
                kdir=fed-kam; [ "$MODE" = shared-db ] && kdir=cluster-kam
                for n in 1 2; do cp "$BENCH/run/$kdir/node$n/kamailio.log" "$out/kamailio-node$n.log" 2>/dev/null || true; done
            fi
            stop_cluster "$srv"
        done
    done
done
echo
python3 "$HERE/fedtable.py" "$TABLE"
echo "table: $TABLE"
