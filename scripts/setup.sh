#!/usr/bin/env bash
# Prepare this checkout for running: Debian packages, .venv, the project.
#
#   scripts/setup.sh [--containers]
#
# Idempotent and quiet: it does (and prints) only what is missing.
#   - Debian packages sip-tester (sipp) and postgresql, and pythonX.Y-venv
#     when the chosen Python cannot make a venv; with --containers (the test
#     suite builds and runs the images) also podman, runc and mmdebstrap;
#     `apt-get update` runs only when something must be installed; waits for
#     a dpkg/apt lock held by another process instead of failing.
#   - .venv/ at the repo root, made with python3.11 (or python3 >= 3.11;
#     PYTHON=/path/to/python overrides), when absent or broken.
#   - `pip install -e '.[test]'` when pyproject.toml changed since the last
#     install (its sha256 is kept in .venv/.pyproject.sha256).
#   - Debian's nodejs and npm, and the npm packages of the WebSocket SIP
#     client tests (sip.js, ws; versions in SIPJS_PACKAGES) in .cache/node
#     (not committed) when absent.
# Runs as root, or through sudo for the apt steps when not root.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=$ROOT/.venv
STAMP=$VENV/.pyproject.sha256

say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

# one setup at a time per checkout (test.sh and up.sh may race)
exec 9<"$ROOT/scripts/setup.sh"
flock 9

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: run as root"
    SUDO=(sudo)
fi

# ---- Python -------------------------------------------------------------
pick_python() {
    local c p
    for c in ${PYTHON:-} python3.11 python3 python3.12 python3.13; do
        p=$(command -v "$c" 2>/dev/null) || continue
        if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

# ---- apt ----------------------------------------------------------------
APT_LOG=""
apt_locks_free() {
    "${SUDO[@]}" python3 - <<'PY'
import fcntl, os, sys
for p in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock",
          "/var/lib/apt/lists/lock", "/var/cache/apt/archives/lock"):
    try:
        fd = os.open(p, os.O_RDWR)
    except OSError:
        continue
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(1)
    finally:
        os.close(fd)
PY
}
wait_apt() {
    local i
    for i in $(seq 1 1800); do
        apt_locks_free && return 0
        [ "$i" = 1 ] && say "waiting for another apt/dpkg process to finish"
        sleep 1
    done
    die "apt/dpkg lock still held after 30 min"
}
apt_run() { # apt-get args...; retried while another process holds a lock
    local try
    [ -n "$APT_LOG" ] || APT_LOG=$(mktemp /tmp/setup-apt.XXXXXX.log)
    for try in 1 2 3 4 5; do
        wait_apt
        if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
               apt-get -o DPkg::Lock::Timeout=600 -q "$@" >>"$APT_LOG" 2>&1; then
            return 0
        fi
        grep -qiE 'could not get lock|unable to lock|is another process using it' "$APT_LOG" || break
        sleep 2
    done
    tail -20 "$APT_LOG" >&2
    die "apt-get $* failed (log $APT_LOG)"
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

PY=$(pick_python) || die "no python3 >= 3.11 found"
MISSING=()
command -v sipp >/dev/null 2>&1 || MISSING+=(sip-tester)
pkg_installed postgresql || MISSING+=(postgresql)
command -v node >/dev/null 2>&1 || MISSING+=(nodejs)
command -v npm >/dev/null 2>&1 || MISSING+=(npm)
if [ "${1:-}" = --containers ]; then
    for p in podman runc mmdebstrap; do command -v "$p" >/dev/null 2>&1 || MISSING+=("$p"); done
fi
if ! venv_ok && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    MISSING+=("python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
fi
if [ ${#MISSING[@]} -gt 0 ]; then
    say "installing Debian packages: ${MISSING[*]}"
    apt_run update
    apt_run install -y --no-install-recommends "${MISSING[@]}"
    rm -f "$APT_LOG"
fi

# ---- venv and the project -----------------------------------------------
if ! venv_ok; then
    [ -e "$VENV" ] && { say "removing broken .venv"; rm -rf "$VENV"; }
    say "creating .venv with $PY ($("$PY" -V 2>&1))"
    "$PY" -m venv "$VENV"
fi

HASH=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ]; then
    say "pip install -e '.[test]' (pyproject.toml changed)"
    PIP_LOG=$(mktemp /tmp/setup-pip.XXXXXX.log)
    if ! "$VENV/bin/python" -m pip install -q -e '.[test]' >"$PIP_LOG" 2>&1; then
        tail -30 "$PIP_LOG" >&2
        die "pip install failed (log $PIP_LOG)"
    fi
    rm -f "$PIP_LOG"
    echo "$HASH" > "$STAMP"
fi

# ---- npm: SIP.js for the WebSocket client tests (tests/test_sipjs.py) ----
SIPJS_PACKAGES=(sip.js@0.21.2 ws@8)
NODE_DIR=$ROOT/.cache/node
if [ ! -d "$NODE_DIR/node_modules/sip.js" ] || [ ! -d "$NODE_DIR/node_modules/ws" ]; then
    say "npm install ${SIPJS_PACKAGES[*]} into .cache/node"
    mkdir -p "$NODE_DIR"
    NPM_LOG=$(mktemp /tmp/setup-npm.XXXXXX.log)
    if ! npm install --prefix "$NODE_DIR" --no-audit --no-fund --no-save "${SIPJS_PACKAGES[@]}" >"$NPM_LOG" 2>&1; then
        tail -30 "$NPM_LOG" >&2
        die "npm install failed (log $NPM_LOG)"
    fi
    rm -f "$NPM_LOG"
fi
