#!/usr/bin/env python3
"""The table of bench/federation/tput.sh rows (TSV files with its header).

    fedtable.py TSV...

Per workload, rate and server: runs, the lowest success %, the median
throughput, holds (runs with success >= 99.9 % and throughput >= 97 % of
the offered rate; for publish also every watcher got its cross-node
NOTIFY), median p50/p99 of the request (and of the initial NOTIFY for
subscribe), the lowest share of cross-node NOTIFYs delivered (publish),
node 1's CPU per request, the whole cluster's (node 1 + node 2 +
PostgreSQL for Kamailio) CPU per request, the highest 1-minute load
average before a run and the most CPU other processes used (% of a core);
then node/kam ratios of the medians and the highest rate each server held
in every run.
"""
import csv
import statistics
import sys


def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(vals):
    v = [x for x in vals if x is not None]
    return statistics.median(v) if v else None


def fmt(x, nd=2):
    return "-" if x is None else ("%.*f" % (nd, x))


def holds(r):
    rate = f(r["rate"])
    ok = (f(r["success_pct"]) or 0) >= 99.9 and (f(r["throughput"]) or 0) >= 0.97 * rate
    if r["workload"] == "publish" and r.get("watchers"):
        ok = ok and f(r.get("delivered")) == f(r["watchers"])
    return ok


def main():
    rows = []
    for path in sys.argv[1:]:
        with open(path) as fh:
            rows += list(csv.DictReader(fh, delimiter="\t"))
    groups = {}
    for r in rows:
        groups.setdefault((r["workload"], int(float(r["rate"])), r["server"]), []).append(r)
    head = ["workload", "rate/s", "server", "runs", "succ% min", "thr/s med", "holds", "p50 ms", "p99 ms",
            "NOTIFY p50", "NOTIFY p99", "delivered", "node1 us/req", "cluster us/req", "load max", "others %"]
    out = [head]
    summ = {}
    for (wl, rate, srv), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "node")):
        ok = [f(r["ok"]) or 0 for r in rs]
        n1 = [f(r["node1_cpu_s"]) / o * 1e6 if f(r["node1_cpu_s"]) is not None and o else None for r, o in zip(rs, ok)]
        cl = [sum(f(r[k]) or 0 for k in ("node1_cpu_s", "node2_cpu_s", "pg_cpu_s")) / o * 1e6 if o else None
              for r, o in zip(rs, ok)]
        dl = [f(r["delivered"]) / f(r["watchers"]) * 100 for r in rs if f(r.get("watchers")) and f(r.get("delivered")) is not None]
        oth = [f(r["others_cpu_s"]) / f(r["wall_s"]) * 100 for r in rs if f(r["others_cpu_s"]) is not None and f(r["wall_s"])]
        s = {"succ": min(f(r["success_pct"]) or 0 for r in rs), "thr": med(f(r["throughput"]) for r in rs),
             "holds": sum(holds(r) for r in rs), "p50": med(f(r["p50_ms"]) for r in rs),
             "p99": med(f(r["p99_ms"]) for r in rs), "np50": med(f(r["notify_p50_ms"]) for r in rs),
             "np99": med(f(r["notify_p99_ms"]) for r in rs), "n1": med(n1), "cl": med(cl),
             "dl": min(dl) if dl else None, "load": max(f(r["load1_before"]) or 0 for r in rs),
             "oth": max(oth) if oth else None, "runs": len(rs)}
        summ[(wl, rate, srv)] = s
        out.append([wl, str(rate), srv, str(len(rs)), fmt(s["succ"]), fmt(s["thr"], 1), "%d/%d" % (s["holds"], len(rs)),
                    fmt(s["p50"]), fmt(s["p99"]), fmt(s["np50"]), fmt(s["np99"]),
                    "-" if s["dl"] is None else "%.2f%%" % s["dl"], fmt(s["n1"], 0), fmt(s["cl"], 0),
                    fmt(s["load"]), fmt(s["oth"], 0)])
        if srv == "kamailio" and (wl, rate, "node") in summ:
            a = summ[(wl, rate, "node")]

            def ratio(k):
                return "%.2fx" % (a[k] / s[k]) if a[k] is not None and s[k] else ""
            out.append([wl, str(rate), "node/kam", "", "", ratio("thr"), "", ratio("p50"), ratio("p99"),
                        ratio("np50"), ratio("np99"), "", ratio("n1"), ratio("cl"), "", ""])
    widths = [max(len(r[i]) for r in out) for i in range(len(head))]
    for r in out:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    print()
    for wl in sorted({k[0] for k in summ}):
        for srv in ("node", "kamailio"):
            held = [rate for (w, rate, s), v in summ.items() if w == wl and s == srv and v["holds"] == v["runs"]]
            tried = [rate for (w, rate, s) in summ if w == wl and s == srv]
            if tried:
                print("%s %s: highest rate held in every run: %s (tried %s)"
                      % (wl, srv, max(held) if held else "none", " ".join(map(str, sorted(tried)))))


if __name__ == "__main__":
    main()
