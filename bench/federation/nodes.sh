#!/bin/bash
# Our 2-node federation for the federation benchmarks: two presence-node
# processes, memory storage, each node its own location and tag (n1, n2),
# one cluster secret.
#
#   nodes.sh start [--mode on-demand-sharing|full-sharing] [--nodes "1 2"]
#   nodes.sh stop  [--nodes "1 2"]
#   nodes.sh pids                     prints "PID1 PID2" (- for a node not running)
#   nodes.sh wait-peers [SECONDS]     until both nodes see each other up (default 30 s)
#
#   node i: SIP udp/tcp 127.0.0.1:530i, admin 127.0.0.1:630i, cluster channel
#   127.0.0.1:730i, node_id ni, sharing_tags {ni: active}.
#
# `start` writes the configs (bench/run/federation-bench/n<i>.yaml, the mode
# is kept in bench/run/federation-bench/mode so that `start --nodes 2` later
# restarts node 2 alone in the same mode), starts the nodes with ../node.sh
# (log bench/run/node-530i.log, pid bench/run/node-530i.pid) and, when both
# run, waits until each sees the other up (GET /cluster).  Log level
# warning; federation defaults otherwise (heartbeat 1 s, query_wait 0.2 s).
# `stop` stops exactly those pids (node.sh stop).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$HERE/.." && pwd)
RUN=$BENCH/run/federation-bench
ADMIN_SECRET=bench-admin-secret-0123456789
CLUSTER_SECRET=bench-cluster-secret-0123456789

usage() { sed -n '2,20p' "$0" >&2; exit 2; }
CMD=${1:-}; [ -n "$CMD" ] && shift
MODE=""; NODES="1 2"; WAIT=30
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --nodes) NODES=$2; shift 2 ;;
        [0-9]*) WAIT=$1; shift ;;
        *) usage ;;
    esac
done

write_cfg() { # i mode
    local i=$1 j=$(( 3 - $1 ))
    mkdir -p "$RUN/state-n$i"
    cat > "$RUN/n$i.yaml" <<YAML
# written by bench/federation/nodes.sh
node_id: n$i
cluster_id: fedbench
log_level: warning
admin_secret_file: $RUN/admin-secret
state_dir: $RUN/state-n$i
storage:
  backend: memory
sharing_tags: {n$i: active}
federation:
  mode: $2
  listen: 127.0.0.1:$(( 7300 + i ))
  secret_file: $RUN/cluster-secret
  peers:
    - {id: n$j, address: '127.0.0.1:$(( 7300 + j ))'}
YAML
}

peers_up() { # i -> 0 if node i answers /cluster with every peer up
    python3 - "$1" "$ADMIN_SECRET" <<'PY'
import json, sys, urllib.request
i, secret = sys.argv[1:]
req = urllib.request.Request("http://127.0.0.1:%d/cluster" % (6300 + int(i)),
                             headers={"Authorization": "Bearer " + secret})
try:
    v = json.load(urllib.request.urlopen(req, timeout=2))
except Exception:
    sys.exit(1)
sys.exit(0 if v.get("peers") and all(p.get("up") for p in v["peers"]) else 1)
PY
}

wait_peers() {
    local deadline=$(( $(date +%s) + WAIT ))
    until peers_up 1 && peers_up 2; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "nodes.sh: the nodes did not see each other up within $WAIT s" >&2; return 1
        fi
        sleep 0.2
    done
}

case "$CMD" in
start)
    mkdir -p "$RUN"
    if [ -z "$MODE" ]; then MODE=$(cat "$RUN/mode" 2>/dev/null || echo on-demand-sharing); fi
    case "$MODE" in on-demand-sharing|full-sharing) ;; *) usage ;; esac
    printf '%s' "$ADMIN_SECRET" > "$RUN/admin-secret"; chmod 600 "$RUN/admin-secret"
    printf '%s' "$CLUSTER_SECRET" > "$RUN/cluster-secret"; chmod 600 "$RUN/cluster-secret"
    echo "$MODE" > "$RUN/mode"
    for i in $NODES; do
        write_cfg "$i" "$MODE"
        "$BENCH/node.sh" start -p $(( 5300 + i )) -a $(( 6300 + i )) -c "$RUN/n$i.yaml" > /dev/null
    done
    if "$BENCH/node.sh" pid -p 5301 > /dev/null 2>&1 && "$BENCH/node.sh" pid -p 5302 > /dev/null 2>&1; then
        wait_peers
    fi
    echo "nodes.sh: $MODE: node 1 pid $("$BENCH/node.sh" pid -p 5301 || echo -) udp/tcp 127.0.0.1:5301, node 2 pid $("$BENCH/node.sh" pid -p 5302 || echo -) udp/tcp 127.0.0.1:5302"
    ;;
stop)
    for i in $NODES; do "$BENCH/node.sh" stop -p $(( 5300 + i )) > /dev/null 2>&1 || true; done
    echo "nodes.sh: stopped node(s) $NODES"
    ;;
pids)
    echo "$("$BENCH/node.sh" pid -p 5301 2>/dev/null || echo -) $("$BENCH/node.sh" pid -p 5302 2>/dev/null || echo -)" ;;
wait-peers)
    wait_peers ;;
*) usage ;;
esac
