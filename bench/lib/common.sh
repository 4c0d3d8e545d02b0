# Shared by the back-to-back benchmarks (compare.sh, fanout.sh,
# cluster/tput.sh, federation/tput.sh): option parsing, result-table
# rotation and row writing.  Sourced, not run:
#
#   BENCH=...; BENCH_NAME=tput.sh; usage() { ...; exit 2; }
#   bench_option() { case "$1" in -n) KAM_N=$2; return 2 ;; esac; return 0; }
#   . "$BENCH/lib/common.sh"
#   bench_options "$@"; bench_rate_args
#
# The caller defines usage (prints its help, exits 2) and bench_option, and
# sets BENCH (the bench/ directory) and BENCH_NAME (for messages).

# bench_options "$@": --only node|kamailio (sets ONLY and SERVERS), -h/--help,
# and the caller's own options through bench_option "$@", which sets its
# variables and returns how many words it used (0: not one of its options,
# an error).  The other words go to ARGS.
bench_options() {
    local used
    ONLY=""; ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --only) ONLY=$2; shift 2 ;;
            -h|--help) usage ;;
            -*) bench_option "$@"; used=$?
                [ "$used" -gt 0 ] || { echo "$BENCH_NAME: unknown option $1" >&2; usage; }
                shift "$used" ;;
            *) ARGS+=("$1"); shift ;;
        esac
    done
    case "$ONLY" in ""|node|kamailio) ;; *) usage ;; esac
    SERVERS="node kamailio"; [ -n "$ONLY" ] && SERVERS=$ONLY
    return 0
}

# bench_rate_args: the positional WORKLOAD "RATE..." REPS DURATION (sets
# those four variables); usage on anything else.
bench_rate_args() {
    [ ${#ARGS[@]} -eq 4 ] || usage
    WORKLOAD=${ARGS[0]}; RATES=${ARGS[1]}; REPS=${ARGS[2]}; DURATION=${ARGS[3]}
    [[ "$REPS" =~ ^[0-9]+$ && "$DURATION" =~ ^[0-9]+$ ]] || usage
}

# bench_tables TABLE ALL HEADER: TABLE (this invocation's rows, may be
# empty: none) starts with HEADER; ALL (every invocation's rows) is appended
# to, unless its header is another layout's: then it is kept aside as
# ALL.old-<time> and a new one started.  Sets TABLE and ALL.
bench_tables() {
    TABLE=$1; ALL=$2
    [ -n "$TABLE" ] && echo "$3" > "$TABLE"
    if [ -s "$ALL" ] && [ "$(head -1 "$ALL")" != "$3" ]; then mv "$ALL" "$ALL.old-$(date +%Y%m%d-%H%M%S)"; fi
    [ -s "$ALL" ] || echo "$3" > "$ALL"
}

# bench_record ROW: append ROW to TABLE (if any) and ALL.
bench_record() {
    [ -n "$TABLE" ] && echo "$1" >> "$TABLE"
    echo "$1" >> "$ALL"
}

# bench_row SERVER RATE REP OUT NOTE [CPU_S...] [-- EXTRA...]: the row of one
# load.sh run (lib/row.py load: its columns) for SETTING, WORKLOAD, DURATION.
bench_row() {
    local server=$1 rate=$2 rep=$3
    shift 3
    python3 "$BENCH/lib/row.py" load "$server" "$SETTING" "$WORKLOAD" "$rate" "$rep" "$DURATION" "$@"
}

# bench_fanout_row SERVER WATCHERS RATE REP OUT NOTE: the row of one load.sh
# fanout run (lib/row.py fanout).
bench_fanout_row() {
    python3 "$BENCH/lib/row.py" fanout "$1" "$SETTING" "$2" "$3" "$4" "$5" "$6"
}
