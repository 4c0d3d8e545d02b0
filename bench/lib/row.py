#!/usr/bin/env python3
"""One TSV row of a benchmark run, from the run's load.sh summary.json
(bench/lib/common.sh's bench_row and bench_fanout_row call it).

    row.py load SERVER SETTING WORKLOAD RATE REP DURATION OUT NOTE CPU... -- EXTRA...
    row.py fanout SERVER SETTING WATCHERS RATE REP OUT NOTE

``load``: date, server, setting, workload, rate, rep, duration_s, the
request counts, throughput and latency of load.sh's main role, NOTIFY
latency, retransmissions, UDP drops, server_cpu_s, then each CPU figure
given (e.g. node 2, PostgreSQL: seconds, measured by the caller), wall_s,
other_cpu_s (load.sh's figure less those CPU figures), each EXTRA column,
note, results (the run's directory name).  ``fanout``: the fan-out figures
of load.sh's fanout workload.  A run without a summary gets empty figures
and the note "no summary", so that a failed run still has its row.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def summary(out: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        return s if isinstance(s, dict) else None
    except (OSError, ValueError):
        return None


def load_row(argv: list[str]) -> list[Any]:
    cut = argv.index("--") if "--" in argv else len(argv)
    server, setting, wl, rate, rep, dur, out, note, *cpus = argv[:cut]
    extra = argv[cut + 1:]
    r: dict[str, Any] = {}
    m: dict[str, Any] = {}
    lat: dict[str, Any] = {}
    s = summary(out) if out else None
    try:
        if s is None:
            raise KeyError("summary.json")
        r = s["roles"].get("main", {})
        m = s["meta"]
        lat = r.get("latency") or {}
    except KeyError:
        note = note or "no summary"
    main = lat.get("publish") or lat.get("subscribe") or lat.get("options") or {}
    nt = lat.get("notify") or {}
    other = m.get("other_cpu_s")
    if other is not None and cpus:
        other = round(max(0.0, other - sum(float(x or 0) for x in cpus)), 2)
    return [
        time.strftime("%Y-%m-%d %H:%M:%S"), server, setting, wl, rate, rep, dur,
        r.get("calls_created", 0), r.get("calls_ok", 0), r.get("calls_failed", 0),
        r.get("success_pct", 0), r.get("throughput_ok_per_s", ""),
        main.get("p50_ms", ""), main.get("p90_ms", ""), main.get("p99_ms", ""),
        main.get("p99.9_ms", ""), main.get("max_ms", ""),
        nt.get("p50_ms", ""), nt.get("p99_ms", ""),
        r.get("retransmissions", ""), m.get("udp_rcvbuf_errors", ""),
        m.get("server_cpu_s", ""), *cpus, m.get("wall_s", ""), other, *extra, note,
        os.path.basename(out) if out else "",
    ]


def fanout_row(argv: list[str]) -> list[Any]:
    server, setting, n, rate, rep, out, note = argv
    s = summary(out) if out else None
    if s is None:
        note, s = note or "no summary", {}
    fo = s.get("fanout", {})
    w = s.get("roles", {}).get("watchers", {})
    m = s.get("meta", {})
    return [
        time.strftime("%Y-%m-%d %H:%M:%S"), server, setting, n, rate, rep, w.get("calls_ok", ""),
        fo.get("notifies_received", ""), fo.get("publish_response_ms", ""),
        fo.get("first_notify_ms", ""), fo.get("p50_notify_ms", ""), fo.get("p99_notify_ms", ""),
        fo.get("last_notify_ms", ""), fo.get("notifies_per_s", ""),
        m.get("udp_rcvbuf_errors", ""), m.get("server_cpu_s", ""), m.get("other_cpu_s", ""), note,
        os.path.basename(out) if out else "",
    ]


def main() -> None:
    kind, argv = sys.argv[1], sys.argv[2:]
    row = load_row(argv) if kind == "load" else fanout_row(argv)
    print("\t".join("" if x is None else str(x) for x in row))


if __name__ == "__main__":
    main()
