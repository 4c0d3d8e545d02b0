#!/bin/bash
# Install the benchmark peer (Kamailio 5.6 + presence modules, PostgreSQL)
# and the load generator (sip-tester = sipp) from Debian (bookworm) packages.
# Idempotent: installs (and runs apt-get update) only when a package is
# missing; waits for a dpkg lock held by another process.  Runs as root, or
# through sudo.  Starts nothing: see start.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)
PKGS=(kamailio kamailio-presence-modules kamailio-postgres-modules
      kamailio-sqlite-modules sqlite3 postgresql sip-tester python3)
MISSING=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || MISSING+=("$p")
done
if [ ${#MISSING[@]} -gt 0 ]; then
    echo "install.sh: installing ${MISSING[*]}"
    for try in 1 2 3 4 5 6 7 8 9 10; do
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update && break
        echo "install.sh: apt-get update failed (lock held?), retrying in 10 s" >&2; sleep 10
    done
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 \
        install -y --no-install-recommends "${MISSING[@]}"
fi
# Debian's policy-rc.d may or may not have started the system PostgreSQL
# cluster; start.sh starts it on demand (and stop.sh stops it only if
# start.sh was the one that started it).
echo "install.sh: $(kamailio -v | head -1); $(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1)"
