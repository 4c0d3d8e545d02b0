# Shared by bench/cluster/kamailio.sh and bench/federation/kamailio-dmq.sh
# (sourced): start one Kamailio node of a two-node cluster.
#
#   launch_kamailio SCRIPT I DIR PORT ARGS...
#
# Adds -n/-N $CHILDREN (when set) and -A for each of $DEFS to ARGS, checks
# the configuration (kamailio -c), starts kamailio in its own session with
# its log in DIR/kamailio.log and its command line in DIR/kamailio.cmdline,
# and waits until its pid file exists and it listens on $ADDR:PORT/udp.
# Exits with a message naming SCRIPT and node I when it does not start.

is_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

launch_kamailio() {
    local script=$1 i=$2 dir=$3 port=$4; shift 4
    local ARGS=("$@") d
    [ -n "${CHILDREN:-}" ] && ARGS+=(-n "$CHILDREN" -N "$CHILDREN")
    for d in "${DEFS[@]}"; do ARGS+=(-A "$d"); done
    kamailio -c "${ARGS[@]}" > "$dir/kamailio-check.log" 2>&1 || {
        echo "$script: kamailio -c rejected the config (node $i):" >&2; tail -20 "$dir/kamailio-check.log" >&2; exit 1; }
    echo "kamailio ${ARGS[*]}" > "$dir/kamailio.cmdline"
    setsid kamailio "${ARGS[@]}" > "$dir/kamailio.log" 2>&1 < /dev/null &
    for _ in $(seq 1 100); do
        if [ -s "$dir/kamailio.pid" ] && ss -Hlun "sport = :$port" | grep -q "$ADDR:$port"; then break; fi
        sleep 0.1
    done
    if ! [ -s "$dir/kamailio.pid" ] || ! is_alive "$(head -1 "$dir/kamailio.pid")"; then
        echo "$script: node $i did not start; log:" >&2; tail -30 "$dir/kamailio.log" >&2; exit 1
    fi
    sleep 0.3
}
