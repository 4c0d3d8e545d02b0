#!/bin/bash
# Load a SIP presence server on loopback with SIPp and summarise the result.
#
#   load.sh TARGET PORT WORKLOAD RATE COUNT
#
# TARGET   server address; loopback only (127.x.x.x or localhost)
# PORT     server SIP port
# WORKLOAD one of
#   options           OPTIONS -> 200 (SIP stack baseline, no presence logic)
#   publish           initial PUBLISH, Event: presence, PIDF body, COUNT distinct presentities
#   subscribe         SUBSCRIBE Event: presence, COUNT distinct watcher/presentity
#                     pairs; each call needs the 2xx AND the initial NOTIFY (answered 200)
#   fanout            COUNT watchers SUBSCRIBE (at RATE/s) to ONE presentity; once all
#                     have their initial NOTIFY, one PUBLISH is sent; counts the
#                     NOTIFYs it causes and their spread in time (FANOUT_EVENT=
#                     message-summary: MWI watchers and a voicemail PUBLISH)
#   dialog-publish    PUBLISH Event: dialog, application/dialog-info+xml body
#   dialog-subscribe  SUBSCRIBE Event: dialog (+ initial NOTIFY)
#   winfo-subscribe   SUBSCRIBE Event: presence.winfo (+ initial NOTIFY)
#   sla-publish       PUBLISH Event: dialog;sla, dialog-info+xml body
#   sla-subscribe     SUBSCRIBE Event: dialog;sla (+ initial NOTIFY)
# RATE     new requests (SIPp calls) per second
# COUNT    number of calls (requests); the run is bounded by COUNT and by time
#
# Environment (all optional):
#   TRANSPORT=udp|tcp        (udp)
#   RUN_ID=tag               unique tag put in user names (default: time+pid)
#   PRES_PREFIX=p..-         presentity user prefix; users are PREFIX<1..COUNT>.
#                            Give an earlier publish run's prefix to SUBSCRIBE
#                            to presentities that have published state.
#   WATCHER_PREFIX=w..-      watcher user prefix
#   PRES_DOMAIN=host         domain part of the URIs (default TARGET)
#   EXPIRES=3600
#   RECV_TIMEOUT_MS          per-message receive timeout (default 10000;
#                            fanout: COUNT/RATE s + 30 s)
#   MAX_CALLS                SIPp -l, max concurrent calls (default max(100, 2*RATE))
#   OUT_DIR                  where to write results (default results/<time>-<workload>-<rate>x<count>
#                            beside this script)
#   SERVER_PID               main pid of the server under test: CPU seconds used by it
#                            and its child processes during the run are recorded
#                            (the CPU used by SIPp itself is always recorded)
#   SIPP_BUFF                SIPp socket send/receive buffer bytes (default 4194304;
#                            SIPp's own default of 64 KB drops NOTIFY bursts)
#   SIPP_EXTRA               extra SIPp arguments (word-split)
#
# Output: a summary on stdout and OUT_DIR/{summary.txt,summary.json,meta.json,
# commands.txt}, plus per-SIPp-instance folders with SIPp's stat.csv, counts,
# logs and errors.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SCEN=$HERE/scenarios

usage() { sed -n '2,45p' "$0" >&2; exit 2; }
[ $# -eq 5 ] || usage
TARGET=$1; PORT=$2; WORKLOAD=$3; RATE=$4; COUNT=$5

case "$TARGET" in
    localhost) TARGET=127.0.0.1 ;;
    127.*) ;;
    *) echo "load.sh: TARGET must be a loopback address (127.x.x.x or localhost)" >&2; exit 2 ;;
esac
[[ "$PORT" =~ ^[0-9]+$ ]] || { echo "load.sh: bad PORT" >&2; exit 2; }
[[ "$RATE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "load.sh: bad RATE" >&2; exit 2; }
[[ "$COUNT" =~ ^[0-9]+$ ]] && [ "$COUNT" -ge 1 ] && [ "$COUNT" -le 2000000 ] \
    || { echo "load.sh: COUNT must be 1..2000000" >&2; exit 2; }
command -v sipp >/dev/null || { echo "load.sh: sipp not found (apt-get install sip-tester)" >&2; exit 2; }

TRANSPORT=${TRANSPORT:-udp}
case "$TRANSPORT" in
    udp) SIPP_T=u1 ;;
    tcp) SIPP_T=t1 ;;
    *) echo "load.sh: TRANSPORT must be udp or tcp" >&2; exit 2 ;;
esac

RUN_ID=${RUN_ID:-$(date +%H%M%S)$$}
PRES_PREFIX=${PRES_PREFIX:-p$RUN_ID-}
WATCHER_PREFIX=${WATCHER_PREFIX:-w$RUN_ID-}
PRES_DOMAIN=${PRES_DOMAIN:-$TARGET}
EXPIRES=${EXPIRES:-3600}
LOCAL_IP=127.0.0.1

# durations (integer seconds, rounded up)
DURATION=$(python3 -c "import math;print(max(1, math.ceil($COUNT/$RATE)))")
if [ "$WORKLOAD" = fanout ]; then
    RECV_TIMEOUT_MS=${RECV_TIMEOUT_MS:-$(( (DURATION + 30) * 1000 ))}
    MAX_CALLS=${MAX_CALLS:-$(( COUNT + 10 ))}
else
    RECV_TIMEOUT_MS=${RECV_TIMEOUT_MS:-10000}
    MAX_CALLS=${MAX_CALLS:-$(python3 -c "print(max(100, int(2*$RATE)))")}
fi
SIPP_TIMEOUT=$(( DURATION + RECV_TIMEOUT_MS / 1000 + 20 ))

OUT_DIR=${OUT_DIR:-$HERE/results/$(date +%Y%m%d-%H%M%S)-$WORKLOAD-${RATE}x${COUNT}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: > "$OUT_DIR/commands.txt"

free_port() {
    python3 -c 'import socket
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
t=socket.socket(); p=s.getsockname()[1]
try:
    t.bind(("127.0.0.1", p)); print(p)
except OSError:
    print(0)'
}

# CPU seconds (utime+stime) of SERVER_PID and its direct children
server_pids() {
    [ -n "${SERVER_PID:-}" ] || return 0
    echo "$SERVER_PID"; ps -o pid= --ppid "$SERVER_PID" 2>/dev/null | tr -d ' ' || true
}
cpu_of() {
    local tck total=0 p f
    tck=$(getconf CLK_TCK)
    for p in "$@"; do
        f=/proc/$p/stat
        [ -r "$f" ] || continue
        total=$(( total + $(awk '{print $14 + $15}' "$f") ))
    done
    python3 -c "print(round($total/$tck, 2))"
}

# run_sipp ROLE SCENARIO COUNT RATE LIMIT [extra sipp args...]  (foreground)
SIPP_RC=()
sipp_cmd() {
    local role=$1 scen=$2 n=$3 r=$4 lim=$5; shift 5
    local dir=$OUT_DIR/$role lport=0 i
    mkdir -p "$dir"
    cp "$SCEN/$scen" "$dir/"
    for i in 1 2 3 4 5; do lport=$(free_port); [ "$lport" != 0 ] && break; done
    CMD=(sipp "$TARGET:$PORT" -sf "$scen" -m "$n" -r "$r" -rp 1000 -l "$lim"
         -t "$SIPP_T" -i "$LOCAL_IP" -p "$lport" -nostdin -buff_size "${SIPP_BUFF:-4194304}"
         -default_behaviors all,-bye
         -recv_timeout "$RECV_TIMEOUT_MS" -timeout "${SIPP_TIMEOUT}s"
         -trace_stat -stf stat.csv -fd 1 -trace_counts -trace_logs
         -trace_err -error_file errors.log
         -key pres_domain "$PRES_DOMAIN" -key expires "$EXPIRES"
         -key pres_prefix "$PRES_PREFIX" -key watcher_prefix "$WATCHER_PREFIX"
         "$@")
    if [ -n "${SIPP_EXTRA:-}" ]; then
        # shellcheck disable=SC2206
        CMD+=($SIPP_EXTRA)
    fi
    echo "(cd $role && ${CMD[*]})" >> "$OUT_DIR/commands.txt"
}
run_fg() { # role
    local rc=0
    (cd "$OUT_DIR/$1" && exec timeout -k 5 $(( SIPP_TIMEOUT + 10 )) "${CMD[@]}" >screen.log 2>&1) || rc=$?
    SIPP_RC+=("$1=$rc")
}

# kernel-wide UDP counters (loopback drops show up as RcvbufErrors)
udp_counter() { awk -v k="$1" '/^Udp:/ { if (!h) { for (i=1;i<=NF;i++) n[$i]=i; h=1 } else print $(n[k]) }' /proc/net/snmp; }
UDP_DROP0=$(udp_counter RcvbufErrors)

# CPU seconds used so far by this shell's finished children: bash `times`
# (2nd line), run in this shell itself (in a $(...) subshell it would see none)
times_file() { times > "$1"; }
children_cpu() { # file written by times_file
    tail -1 "$1" | python3 -c 'import re,sys
v=[int(m)*60+float(s) for m,s in re.findall(r"(\d+)m([\d.]+)s", sys.stdin.read())]
print(round(sum(v),2))'
}
times_file "$OUT_DIR/.times0"
# CPU seconds used by all processes (user+nice+system, all cores): what neither the server
# nor SIPp used of it during the run is other work, recorded as other_cpu_s
machine_busy() { awk -v t="$(getconf CLK_TCK)" '/^cpu /{printf "%.2f", ($2+$3+$4)/t}' /proc/stat; }
BUSY0=$(machine_busy)

PIDS=$(server_pids | tr '\n' ' ')
CPU0=""
[ -n "$PIDS" ] && CPU0=$(cpu_of $PIDS)
T_START=$(date +%s.%N)

case "$WORKLOAD" in
    options)
        sipp_cmd main options.xml "$COUNT" "$RATE" "$MAX_CALLS"; run_fg main ;;
    publish)
        sipp_cmd main publish.xml "$COUNT" "$RATE" "$MAX_CALLS"; run_fg main ;;
    dialog-publish)
        sipp_cmd main publish_dialog.xml "$COUNT" "$RATE" "$MAX_CALLS" -key event dialog; run_fg main ;;
    sla-publish)
        sipp_cmd main publish_dialog.xml "$COUNT" "$RATE" "$MAX_CALLS" -key event "dialog;sla"; run_fg main ;;
    subscribe)
        sipp_cmd main subscribe.xml "$COUNT" "$RATE" "$MAX_CALLS" \
            -key event presence -key accept application/pidf+xml; run_fg main ;;
    dialog-subscribe)
        sipp_cmd main subscribe.xml "$COUNT" "$RATE" "$MAX_CALLS" \
            -key event dialog -key accept application/dialog-info+xml; run_fg main ;;
    sla-subscribe)
        sipp_cmd main subscribe.xml "$COUNT" "$RATE" "$MAX_CALLS" \
            -key event "dialog;sla" -key accept application/dialog-info+xml; run_fg main ;;
    winfo-subscribe)
        sipp_cmd main subscribe.xml "$COUNT" "$RATE" "$MAX_CALLS" \
            -key event presence.winfo -key accept application/watcherinfo+xml; run_fg main ;;
    fanout)
        PRES_USER=${PRES_PREFIX}1
        case "${FANOUT_EVENT:-presence}" in
            presence) FAN_KEYS=(-key event presence -key accept application/pidf+xml); FAN_PUB=publish.xml ;;
            message-summary) FAN_KEYS=(-key event message-summary -key accept application/simple-message-summary)
                             FAN_PUB=publish_mwi.xml ;;
            *) echo "load.sh: FANOUT_EVENT must be presence or message-summary" >&2; exit 2 ;;
        esac
        sipp_cmd watchers fanout_watch.xml "$COUNT" "$RATE" "$MAX_CALLS" -key pres_user "$PRES_USER" "${FAN_KEYS[@]}"
        WCMD=("${CMD[@]}")
        (cd "$OUT_DIR/watchers" && exec timeout -k 5 $(( SIPP_TIMEOUT + 10 )) "${WCMD[@]}" >screen.log 2>&1) &
        WPID=$!
        # wait until every watcher has its initial NOTIFY (from SIPp's counts file)
        deadline=$(( $(date +%s) + DURATION + 30 ))
        subscribed=0
        while kill -0 "$WPID" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
            f=$(ls "$OUT_DIR"/watchers/*_counts.csv 2>/dev/null | head -1 || true)
            if [ -n "$f" ]; then
                subscribed=$(python3 - "$f" <<'PY'
import csv, re, sys
rows = [r for r in csv.reader(open(sys.argv[1]), delimiter=";") if r]
if len(rows) < 2:
    print(0); sys.exit()
head, last = rows[0], rows[-1]
idx = sorted((int(m.group(1)), i) for i, h in enumerate(head)
             for m in [re.match(r"^(\d+)_NOTIFY_Recv$", h)] if m)
# every NOTIFY_Recv but the last one in the scenario is an initial NOTIFY
print(sum(int(last[i]) for _, i in idx[:-1] if i < len(last) and last[i].isdigit()))
PY
)
                [ "$subscribed" -ge "$COUNT" ] && break
            fi
            sleep 0.5
        done
        echo "fanout: $subscribed/$COUNT watchers have their initial NOTIFY" | tee "$OUT_DIR/fanout.log"
        sleep 1
        sipp_cmd publisher "$FAN_PUB" 1 1 10
        run_fg publisher
        rc=0; wait "$WPID" || rc=$?
        SIPP_RC+=("watchers=$rc")
        ;;
    *) echo "load.sh: unknown WORKLOAD $WORKLOAD" >&2; usage ;;
esac

T_END=$(date +%s.%N)
BUSY1=$(machine_busy)
times_file "$OUT_DIR/.times1"
CLIENT_CPU=$(python3 -c "print(round($(children_cpu "$OUT_DIR/.times1") - $(children_cpu "$OUT_DIR/.times0"), 2))")
rm -f "$OUT_DIR/.times0" "$OUT_DIR/.times1"
UDP_DROPS=$(( $(udp_counter RcvbufErrors) - UDP_DROP0 ))
CPU1=""
[ -n "$PIDS" ] && CPU1=$(cpu_of $PIDS)
SERVER_CPU=None
[ -n "$CPU0" ] && SERVER_CPU=$(python3 -c "print(round($CPU1-$CPU0, 2))")

python3 - "$OUT_DIR/meta.json" <<PY
import json, sys
json.dump({
  "workload": "$WORKLOAD", "target": "$TARGET", "port": $PORT, "transport": "$TRANSPORT",
  "rate": $RATE, "count": $COUNT, "run_id": "$RUN_ID", "pres_prefix": "$PRES_PREFIX",
  "watcher_prefix": "$WATCHER_PREFIX", "pres_domain": "$PRES_DOMAIN", "expires": $EXPIRES,
  "recv_timeout_ms": $RECV_TIMEOUT_MS, "max_calls": $MAX_CALLS,
  "sipp_rc": "${SIPP_RC[*]}", "t_start": $T_START, "t_end": $T_END,
  "wall_s": round($T_END - $T_START, 3),
  "server_pids": "${PIDS% }", "server_cpu_s": $SERVER_CPU,
  "udp_rcvbuf_errors": $UDP_DROPS,
  "client_cpu_s": $CLIENT_CPU,
  "machine_busy_s": round($BUSY1 - $BUSY0, 2),
  "other_cpu_s": (round(max(0.0, $BUSY1 - $BUSY0 - $SERVER_CPU - $CLIENT_CPU), 2)
                  if $SERVER_CPU is not None else None),
}, open(sys.argv[1], "w"), indent=1)
PY
python3 "$HERE/lib/summarize.py" "$OUT_DIR"
echo "  sipp exit codes: ${SIPP_RC[*]}  (0 = all calls ok)"
echo "  results: $OUT_DIR"
