# Shared by bench/cluster/kamailio.sh and bench/federation/kamailio-dmq.sh
# (sourced): start and stop one Kamailio node of a two-node cluster.
#
#   launch_kamailio SCRIPT I DIR PORT ARGS...
#   stop_kamailio SCRIPT I PIDFILE
#
# Adds -n/-N $CHILDREN (when set) and -A for each of $DEFS to ARGS, checks
# the configuration (kamailio -c), starts kamailio in its own session with
# its log in DIR/kamailio.log and its command line in DIR/kamailio.cmdline,
# and waits until its pid file exists and it listens on $ADDR:PORT/udp.
# Exits with a message naming SCRIPT and node I when it does not start.

is_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
cmd_of() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null; }
wait_gone() { local i; for i in $(seq 1 $(( $2 * 10 ))); do is_alive "$1" || return 0; sleep 0.1; done; return 1; }

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

# Stop node I whose pid is in PIDFILE: TERM (KILL after 15 s), then KILL any
# of its children left; only a process that is really kamailio is touched.
stop_kamailio() {
    local script=$1 n=$2 f=$3 pid kids k
    [ -f "$f" ] || return 0
    pid=$(head -1 "$f")
    if is_alive "$pid" && cmd_of "$pid" | grep -q kamailio; then
        kids=$(ps -o pid= --ppid "$pid" | tr -d ' ')
        kill -TERM "$pid"
        if ! wait_gone "$pid" 15; then
            echo "$script: node $n ($pid) did not exit on TERM, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 5 || true
        fi
        for k in $kids; do
            if is_alive "$k" && cmd_of "$k" | grep -q kamailio; then kill -KILL "$k" 2>/dev/null || true; fi
        done
    fi
    rm -f "$f"
}
