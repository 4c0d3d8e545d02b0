#!/usr/bin/env bash
# Start one presence node in the foreground: SIP on 127.0.0.1:5060 (UDP/TCP),
# admin HTTP API on 127.0.0.1:8081.  Extra args go to presence-node.
#   scripts/up.sh [presence-node args...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
cat <<'HINT'
Try it, from another shell in this directory:
  curl -s http://127.0.0.1:8081/healthz
  curl -s -H "Authorization: Bearer $(cat .presence-node/admin-secret)" http://127.0.0.1:8081/presentities
  bench/load.sh 127.0.0.1 5060 publish 10 10      # 10 PUBLISHes (SIPp)
  bench/load.sh 127.0.0.1 5060 subscribe 10 10    # 10 SUBSCRIBEs, each with its NOTIFY
  .venv/bin/presence-node tags list --admin 127.0.0.1:8081 --admin-secret-file .presence-node/admin-secret
Stop with Ctrl-C (SIGINT/SIGTERM drain gracefully).
HINT
exec .venv/bin/presence-node --sip 127.0.0.1:5060 --admin 127.0.0.1:8081 "$@"
