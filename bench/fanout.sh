#!/bin/bash
# Fan-out of one PUBLISH to N watchers, on our node and on Kamailio.
#
#   fanout.sh [options] N [REPS]
#
# For each server (node, then Kamailio), REPS times (default 1): start a fresh
# server, run `load.sh ... fanout RATE N` (N watchers SUBSCRIBE to one
# presentity at RATE/s; once all have their initial NOTIFY, one PUBLISH is
# sent), stop the server.  Prints, per run, the watchers subscribed, the
# NOTIFYs the PUBLISH caused and the time from the PUBLISH to the first,
# median, p99 and LAST NOTIFY, then the node/Kamailio ratio of the time to
# the last NOTIFY.  Rows go to results/fanout.tsv.  udp_drops counts kernel
# UDP receive-buffer drops during the run (a NOTIFY burst overflowing a
# socket): each dropped NOTIFY or 200 costs a retransmission (500 ms+).
#
# Options:
#   -r RATE      watcher SUBSCRIBE rate (default 1000/s)
#   -p PORT      node SIP port (default 5080); -c FILE node config
#   -n N, -s M   Kamailio workers (default 1) and subs_db_mode (default 0)
#   -k PORT      Kamailio port (default 5070)
#   --only node|kamailio
# Environment: NODE_ARGS (extra presence-node args).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
usage() { sed -n '2,22p' "$0" >&2; exit 2; }

BENCH=$HERE; BENCH_NAME=fanout.sh
RATE=1000; NODE_PORT=5080; NODE_CFG=""; KAM_N=1; KAM_S=0; KAM_PORT=5070
bench_option() {
    case "$1" in
        -r) RATE=$2 ;;
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
[ ${#ARGS[@]} -ge 1 ] && [ ${#ARGS[@]} -le 2 ] || usage
N=${ARGS[0]}; REPS=${ARGS[1]:-1}
[[ "$N" =~ ^[0-9]+$ && "$REPS" =~ ^[0-9]+$ ]] || usage

RESULTS=$HERE/results
mkdir -p "$RESULTS"
# One table of every run (no per-invocation one): the summary below reads
# this invocation's rows from line FIRST on.
HEADER='date	server	setting	watchers	rate	rep	sub_ok	notifies	publish_ms	first_notify_ms	p50_notify_ms	p99_notify_ms	last_notify_ms	notifies_per_s	udp_drops	server_cpu_s	other_cpu_s	note	results'
bench_tables "" "$RESULTS/fanout.tsv" "$HEADER"
FIRST=$(( $(wc -l < "$ALL") + 1 ))

NODE_START=(-p "$NODE_PORT")
[ -n "$NODE_CFG" ] && NODE_START+=(-c "$NODE_CFG")
# shellcheck disable=SC2206
[ -n "${NODE_ARGS:-}" ] && NODE_START+=(-- $NODE_ARGS)
KAM_START=(-p "$KAM_PORT" -s "$KAM_S" --fresh)
[ -n "$KAM_N" ] && [ "$KAM_N" != default ] && KAM_START+=(-n "$KAM_N")

stop_server() {
    case "$1" in
        node) "$HERE/node.sh" stop -p "$NODE_PORT" >/dev/null 2>&1 ;;
        kamailio) "$HERE/kamailio/stop.sh" --keep-db >/dev/null 2>&1 ;;
    esac
}
start_server() { # sets SPID SPORT SETTING START_ERR
    local out rc
    case "$1" in
        node)
            SPORT=$NODE_PORT; SETTING=node
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

trap 'for s in $SERVERS; do stop_server $s; done' EXIT
trap 'exit 130' INT TERM
for s in $SERVERS; do stop_server "$s"; done

for rep in $(seq 1 "$REPS"); do
    for srv in $SERVERS; do
        SPID=""; note=""; out=""
        if ! start_server "$srv"; then
            echo "fanout.sh: $srv did not start: $START_ERR" >&2
            bench_record "$(bench_fanout_row "$srv" "$N" "$RATE" "$rep" "" "start failed: $START_ERR")"
            stop_server "$srv"; continue
        fi
        out=$RESULTS/fanout-$(date +%Y%m%d-%H%M%S)-$srv-$N-r$rep
        SERVER_PID=$SPID OUT_DIR=$out "$HERE/load.sh" 127.0.0.1 "$SPORT" fanout "$RATE" "$N" > "$out.log" 2>&1 || true
        mv "$out.log" "$out/load.log" 2>/dev/null || true
        kill -0 "$SPID" 2>/dev/null || note="server died during run"
        bench_record "$(bench_fanout_row "$srv" "$N" "$RATE" "$rep" "$out" "$note")"
        stop_server "$srv"
    done
done

echo
tail -n +"$FIRST" "$ALL" | python3 -c '
import csv, statistics, sys
head = ["server", "setting", "watchers", "rep", "sub_ok", "notifies", "publish_ms", "first_ms", "p50_ms", "p99_ms", "LAST_ms", "notifies/s", "udp_drops", "server_cpu_s", "others_cpu_s", "note"]
keys = ["server", "setting", "watchers", "rep", "sub_ok", "notifies", "publish_ms", "first_notify_ms", "p50_notify_ms", "p99_notify_ms", "last_notify_ms", "notifies_per_s", "udp_drops", "server_cpu_s", "other_cpu_s", "note"]
cols = "date server setting watchers rate rep sub_ok notifies publish_ms first_notify_ms p50_notify_ms p99_notify_ms last_notify_ms notifies_per_s udp_drops server_cpu_s other_cpu_s note results".split()
rows = [dict(zip(cols, r)) for r in csv.reader(sys.stdin, delimiter="\t") if r]
out = [[(r.get(k) or "-")[:50] for k in keys] for r in rows]
w = [max(len(x) for x in c) for c in zip(head, *out)]
print("  ".join(h.ljust(n) for h, n in zip(head, w)).rstrip())
for o in out:
    print("  ".join(x.ljust(n) for x, n in zip(o, w)).rstrip())
def last(s):
    v = [float(r["last_notify_ms"]) for r in rows if r["server"] == s and r.get("last_notify_ms")
         and r.get("notifies") == r.get("watchers")]
    return statistics.median(v) if v else None
n, k = last("node"), last("kamailio")
for s, v in (("node", n), ("kamailio", k)):
    if any(r["server"] == s for r in rows):
        print(f"time to last NOTIFY, {s}: " + (f"{v:.1f} ms (median of complete runs)" if v is not None else "no complete run"))
if n and k:
    print(f"node/kamailio: {n / k:.2f}x")
'
echo "table: $ALL"
