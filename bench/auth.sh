#!/bin/bash
# The cost of digest authentication (#15): server CPU per authenticated
# PUBLISH and SUBSCRIBE (the request, its 401, the request with MD5 qop=auth
# credentials: what a phone sends), the node against Kamailio with one worker
# and auth_check on the same users, back to back; and the node without auth.
#
#   auth.sh [COUNT] [RATE]     (default 3000 calls at 250/s per workload)
#
# Users u1..uCOUNT, password "pw", realm 127.0.0.1: the node reads them from
# a users file (memory storage), Kamailio from its PostgreSQL "subscriber"
# table (auth_db, HA1 column: its default configuration reads it per
# request).  bench/auth_load.py is the client (SIPp takes no per-call digest
# user).  CPU: utime+stime from /proc of the server and its children.
# Results: bench/results/<time>-auth/summary.txt.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
COUNT=${1:-3000}
RATE=${2:-250}
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
NODE=${NODE:-$(dirname "$PY")/presence-node}
OUT=${OUT_DIR:-$HERE/results/$(date -u +%Y%m%dT%H%M%S)-auth}
mkdir -p "$OUT"
NODE_PORT=5180
KAM_PORT=5170
TICK=$(getconf CLK_TCK)

cpu() { # pid: CPU seconds of it and its children
    local total=0 p
    for p in "$1" $(ps -o pid= --ppid "$1"); do
        [ -r "/proc/$p/stat" ] || continue
        total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
    done
    echo "$total"
}

measure() { # label pid port workload
    local c0 c1 res
    c0=$(cpu "$2")
    res=$("$PY" "$HERE/auth_load.py" 127.0.0.1 "$3" "$4" "$COUNT" "$RATE" --prefix "u" || true)
    c1=$(cpu "$2")
    local us
    us=$(awk -v a="$c0" -v b="$c1" -v t="$TICK" -v n="$COUNT" 'BEGIN {printf "%.0f", (b - a) / t / n * 1e6}')
    echo "$1 $4: $us us CPU per authenticated request ($res)" | tee -a "$OUT/summary.txt"
}

"$PY" - "$OUT" "$COUNT" <<'PYEOF'
import sys
from presence_node.service.auth import user_line
from presence_node.sip import digest
out, n = sys.argv[1], int(sys.argv[2])
with open(f"{out}/users", "w") as f, open(f"{out}/subscriber.sql", "w") as s:
    s.write("TRUNCATE subscriber;\nCOPY subscriber (username, domain, password, ha1, ha1b) FROM stdin;\n")
    for i in range(1, n + 1):
        f.write(user_line(f"u{i}@127.0.0.1", "127.0.0.1", "pw") + "\n")
        s.write(f"u{i}\t127.0.0.1\t\t{digest.ha1('MD5', f'u{i}', '127.0.0.1', 'pw')}\t\n")
    s.write("\\.\n")
PYEOF

run_node() { # label auth-mode
    local cfg=$OUT/node-$2.yaml
    # Overload control off (its longest target): on a busy machine it would
    # answer some requests with a cheap 503 and flatter the figure.
    printf 'sip: 127.0.0.1:%s\nadmin: 127.0.0.1:8191\nlog_level: warning\nstate_dir: %s/state\nlimits: {overload_target: 10, overload_interval: 10}\n' \
        "$NODE_PORT" "$OUT" > "$cfg"
    if [ "$2" = digest ]; then
        printf 'auth:\n  mode: digest\n  algorithms: [MD5]\n  users_file: %s/users\n' "$OUT" >> "$cfg"
    fi
    "$NODE" --config "$cfg" > "$OUT/node-$2.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 50); do ss -Hlun "sport = :$NODE_PORT" | grep -q . && break; sleep 0.1; done
    measure "$1" "$pid" "$NODE_PORT" publish
    measure "$1" "$pid" "$NODE_PORT" subscribe
    kill -TERM "$pid"; wait "$pid" || true
}

run_kamailio() {
    "$HERE/kamailio/start.sh" -n 1 -p "$KAM_PORT" --fresh -D WITH_AUTH > "$OUT/kamailio-start.log"
    trap '"$HERE/kamailio/stop.sh" >/dev/null 2>&1 || true' EXIT
    export PGPASSWORD=kamailiorw
    if [ -z "$(psql -h 127.0.0.1 -U kamailio -d kamailio -qtAc "select to_regclass('public.subscriber')")" ]; then
        psql -q -h 127.0.0.1 -U kamailio -d kamailio -f /usr/share/kamailio/postgres/auth_db-create.sql >/dev/null
    fi
    psql -q -h 127.0.0.1 -U kamailio -d kamailio -f "$OUT/subscriber.sql" >/dev/null
    local pid
    pid=$(head -1 "$ROOT/bench/run/kamailio/kamailio.pid")
    measure "kamailio-1-worker-auth_check" "$pid" "$KAM_PORT" publish
    measure "kamailio-1-worker-auth_check" "$pid" "$KAM_PORT" subscribe
    "$HERE/kamailio/stop.sh" > /dev/null
    trap - EXIT
}

echo "auth.sh: $COUNT calls at $RATE/s per workload, $(date -u)" | tee "$OUT/summary.txt"
run_node node-digest digest
run_kamailio
run_node node-auth-off off
echo "auth.sh: results in $OUT"
