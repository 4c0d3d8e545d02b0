#!/usr/bin/env bash
# The main job: a local presence cluster from a PresenceCluster manifest
# (default: the HA example, two nodes on one private PostgreSQL), supervised
# in the foreground by the same planner and failover code as the operator.
#   scripts/up.sh [MANIFEST] [presence-cluster up args...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
MANIFEST=${1:-examples/01-ha/cluster.yaml}
[ $# -gt 0 ] && shift
cat <<'HINT'
Starting the cluster: node l1-0 on SIP 127.0.0.1:5060 (admin :8081), node l1-1 on :5061 (admin :8082).
From another shell in this directory:
  .venv/bin/presence-cluster status                     # who owns which tag, node pids
  bench/load.sh 127.0.0.1 5060 publish 10 10            # 10 PUBLISHes to l1-0 (SIPp)
  bench/load.sh 127.0.0.1 5061 subscribe 10 10          # 10 SUBSCRIBEs, each with its NOTIFY, via l1-1
  kill -9 <pid of l1-0>                                  # watch vip move to l1-1 (about 1 s)
  .venv/bin/presence-cluster down                       # stop everything started here
Ctrl-C stops supervising only (the nodes keep running; `presence-cluster supervise` re-attaches).
HINT
exec .venv/bin/presence-cluster up "$MANIFEST" --sip-base 5060 --admin-base 8081 "$@"
