#!/usr/bin/env python3
"""Rows and the table of bench/overload.sh, from load.sh result directories.

  overload_table.py --holds RUN_DIR RATE     exit 0 if the run held RATE
  overload_table.py --row RUN_DIR MODE SERVER HELD FACTOR RATE REP   one TSV row
  overload_table.py --table TSV              the summary table

Goodput: requests answered 2xx per second (summarize.py's throughput_ok_per_s).
The 503 share is SIPp's "unexpected message" failures: the scenarios expect
a 2xx, and a 503 is the only other final answer an overloaded server gives.
"""
import csv
import json
import os
import sys
import time


def summary(run_dir):
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return {}, {}
    return s["roles"].get("main", {}), s.get("meta", {})


def main_latency(r):
    lat = r.get("latency") or {}
    return lat.get("publish") or lat.get("subscribe") or lat.get("options") or {}


def holds(run_dir, rate):
    r, _ = summary(run_dir)
    return r.get("success_pct", 0) >= 99.9 and (r.get("throughput_ok_per_s") or 0) >= 0.97 * rate


def row(run_dir, mode, server, held, factor, rate, rep):
    r, m = summary(run_dir)
    sent = r.get("calls_created", 0)
    lat = main_latency(r)
    goodput = r.get("throughput_ok_per_s") or 0
    shed = r.get("failed_unexpected_msg", 0)
    other = (r.get("calls_failed", 0) or 0) - shed
    return [time.strftime("%Y-%m-%d %H:%M:%S"), mode, server, held, factor, rate, rep, sent, r.get("calls_ok", 0),
            goodput, round(100.0 * goodput / float(held), 1), lat.get("p50_ms", ""), lat.get("p99_ms", ""),
            round(100.0 * shed / sent, 1) if sent else "", other, r.get("retransmissions", ""),
            m.get("server_cpu_s", ""), m.get("other_cpu_s", ""), os.path.basename(run_dir)]


def table(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    cols = [("mode", "mode"), ("server", "server"), ("held", "held/s"), ("factor", "x"), ("rate", "offered/s"),
            ("rep", "rep"), ("goodput", "goodput/s"), ("goodput_pct_held", "% of held"), ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"), ("shed_503_pct", "503 %"), ("other_failed", "other failed"),
            ("retrans", "retrans"), ("server_cpu_s", "cpu s"), ("other_cpu_s", "others' cpu s")]
    out = [[title for _, title in cols]] + [[r[k] for k, _ in cols] for r in rows]
    widths = [max(len(str(x[i])) for x in out) for i in range(len(cols))]
    for line in out:
        print("  ".join(str(v).rjust(w) for v, w in zip(line, widths)))


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["--holds"]:
        sys.exit(0 if holds(a[1], float(a[2])) else 1)
    elif a[:1] == ["--row"]:
        print("\t".join(str(x) for x in row(*a[1:8])))
    elif a[:1] == ["--table"]:
        table(a[1])
    else:
        sys.exit(__doc__)
