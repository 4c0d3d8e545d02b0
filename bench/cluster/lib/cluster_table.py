#!/usr/bin/env python3
"""Side-by-side table of tput.sh TSVs: our 2-node cluster vs Kamailio's.

    cluster_table.py TSV [TSV...]

First the table of ../../lib/compare_table.py (per workload and rate, per
cluster: lowest success %, median throughput of node 1, runs that hold =
success >= 99.9 % and throughput >= 97 % of the offered rate, median p50/p99,
node 1's CPU; node/kam ratios; highest rate held in every run), then the CPU
of the whole cluster: node 1, node 2 and PostgreSQL in % of one core
(medians) and their sum per successful request, with the node/kam ratio.
"""
import csv
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
import compare_table as ct  # noqa: E402


def pct(r, key):
    c, w = ct.fnum(r.get(key)), ct.fnum(r.get("wall_s"))
    return 100.0 * c / w if c is not None and w else None


def total_us(r):
    vals = [ct.fnum(r.get(k)) for k in ("server_cpu_s", "node2_cpu_s", "pg_cpu_s")]
    ok = ct.fnum(r.get("ok"))
    if any(v is None for v in vals) or not ok:
        return None
    return 1e6 * sum(vals) / ok


def medf(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main(paths):
    ct.main(paths)
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            rows.extend(csv.DictReader(f, delimiter="\t"))
    rows = [r for r in rows if not r.get("note", "").startswith("start failed")]
    if not rows:
        return
    groups = {}
    for r in rows:
        groups.setdefault((r["workload"], float(r["rate"])), {}).setdefault(r["server"], []).append(r)
    head = ["workload", "rate/s", "cluster", "node1 %", "node2 %", "pg %", "total %", "cluster CPU us/req"]
    out = []
    for (wl, rate), by in sorted(groups.items()):
        tot = {}
        for srv in ("node", "kamailio"):
            if srv not in by:
                continue
            rs = by[srv]
            n1 = medf(pct(r, "server_cpu_s") for r in rs)
            n2 = medf(pct(r, "node2_cpu_s") for r in rs)
            pg = medf(pct(r, "pg_cpu_s") for r in rs)
            t = medf(total_us(r) for r in rs)
            tot[srv] = t
            s = sum(x for x in (n1, n2, pg) if x is not None)
            out.append([wl, f"{rate:g}", srv, ct.fmt(n1), ct.fmt(n2), ct.fmt(pg), ct.fmt(s), ct.fmt(t)])
        if "node" in tot and "kamailio" in tot:
            out.append([wl, f"{rate:g}", "node/kam", "", "", "", "", ct.ratio(tot["node"], tot["kamailio"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *out)]
    print()
    print("CPU of the whole cluster during the run (medians; % of one core; 2 cores = 200 %):")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for line in out:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: cluster_table.py TSV [TSV...]")
    main(sys.argv[1:])
