#!/usr/bin/env bash
# Start one presence node in the foreground: SIP on 127.0.0.1:5060 (UDP/TCP),
# admin HTTP API on 127.0.0.1:8081.  Extra args go to presence-node.
#   scripts/up.sh [presence-node args...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
exec .venv/bin/presence-node --sip 127.0.0.1:5060 --admin 127.0.0.1:8081 "$@"
