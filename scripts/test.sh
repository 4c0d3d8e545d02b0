#!/usr/bin/env bash
# Run the test suite: scripts/setup.sh --containers (the suite builds and runs
# the container images), then pytest -q with any extra args.
#   scripts/test.sh [pytest args...]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
scripts/setup.sh --containers
exec .venv/bin/python -m pytest -q "$@"
