#!/usr/bin/env python3
"""Side-by-side table of a compare.sh TSV: our node vs Kamailio.

    compare_table.py TSV [TSV...]

Per workload and offered rate, for each server: runs, lowest success %,
median throughput, runs that hold (success >= 99.9 % and throughput >= 97 %
of the offered rate), median p50 / p99 latency of the request (and of the
initial NOTIFY for SUBSCRIBE workloads), median server CPU (% of one core
over the run, and CPU microseconds per successful request), the most CPU
that other processes (neither server nor SIPp) used in a run, in % of one
core (high = a busy machine, figures less comparable); then the
node/Kamailio ratio of the medians, and the highest rate each server held in
every run.
"""
import csv
import statistics
import sys

HOLD_SUCCESS = 99.9
HOLD_THROUGHPUT = 0.97


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(rows, key):
    vals = [x for x in (fnum(r.get(key)) for r in rows) if x is not None]
    return statistics.median(vals) if vals else None


def holds(r):
    s, t, rate = fnum(r.get("success_pct")), fnum(r.get("throughput")), fnum(r.get("rate"))
    return s is not None and t is not None and rate and s >= HOLD_SUCCESS and t >= HOLD_THROUGHPUT * rate


def cpu_pct(r):
    c, w = fnum(r.get("server_cpu_s")), fnum(r.get("wall_s"))
    return 100.0 * c / w if c is not None and w else None


def other_pct(r):
    c, w = fnum(r.get("other_cpu_s")), fnum(r.get("wall_s"))
    return 100.0 * c / w if c is not None and w else None


def cpu_us_per_req(r):
    c, ok = fnum(r.get("server_cpu_s")), fnum(r.get("ok"))
    return 1e6 * c / ok if c is not None and ok else None


def fmt(v, nd=1):
    if v is None:
        return "-"
    return f"{v:.{nd}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def summarize(rows):
    ran = [r for r in rows if not r.get("note", "").startswith("start failed")]
    agg = {"runs": len(rows), "ran": len(ran)}
    if not ran:
        agg["note"] = rows[0].get("note", "")[:60] if rows else ""
        return agg
    agg["succ"] = min(fnum(r.get("success_pct")) or 0.0 for r in ran)
    agg["thr"] = med(ran, "throughput")
    agg["holds"] = sum(1 for r in ran if holds(r))
    agg["p50"], agg["p99"] = med(ran, "p50_ms"), med(ran, "p99_ms")
    agg["n50"], agg["n99"] = med(ran, "notify_p50_ms"), med(ran, "notify_p99_ms")
    cp = [x for x in map(cpu_pct, ran) if x is not None]
    cu = [x for x in map(cpu_us_per_req, ran) if x is not None]
    agg["cpu"] = statistics.median(cp) if cp else None
    agg["cpu_req"] = statistics.median(cu) if cu else None
    op = [x for x in map(other_pct, ran) if x is not None]
    agg["other"] = max(op) if op else None
    agg["note"] = "; ".join(sorted({r["note"] for r in ran if r.get("note")}))[:60]
    return agg


def main(paths):
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            rows.extend(csv.DictReader(f, delimiter="\t"))
    if not rows:
        print("(no runs)")
        return
    groups = {}
    for r in rows:
        key = (r["workload"], float(r["rate"]))
        groups.setdefault(key, {}).setdefault(r["server"], []).append(r)
    settings = sorted({f"{r['server']}={r['setting']}" for r in rows})
    notify = any(r.get("notify_p50_ms") for r in rows)
    head = ["workload", "rate/s", "server", "runs", "succ% min", "thr/s med", "holds",
            "p50 ms", "p99 ms"]
    if notify:
        head += ["NOTIFY p50", "NOTIFY p99"]
    head += ["CPU % core", "CPU us/req", "others %", "note"]
    out = []
    best = {}
    for (wl, rate), by in sorted(groups.items()):
        aggs = {}
        for srv in ("node", "kamailio") + tuple(sorted(set(by) - {"node", "kamailio"})):
            if srv not in by:
                continue
            a = aggs[srv] = summarize(by[srv])
            if a.get("ran") and a.get("holds") == a["runs"]:
                best[(wl, srv)] = max(best.get((wl, srv), 0), rate)
            line = [wl, f"{rate:g}", srv, f"{a['ran']}/{a['runs']}" if a["ran"] != a["runs"] else str(a["runs"])]
            if not a["ran"]:
                line += ["-"] * (len(head) - len(line) - 1) + [a.get("note", "")]
            else:
                line += [fmt(a["succ"], 2), fmt(a["thr"]), f"{a['holds']}/{a['ran']}",
                         fmt(a["p50"], 2), fmt(a["p99"], 2)]
                if notify:
                    line += [fmt(a["n50"], 2), fmt(a["n99"], 2)]
                line += [fmt(a["cpu"]), fmt(a["cpu_req"]), fmt(a["other"], 0), a.get("note", "")]
            out.append(line)
        n, k = aggs.get("node"), aggs.get("kamailio")
        if n and k and n.get("ran") and k.get("ran"):
            line = [wl, f"{rate:g}", "node/kam", "", "", ratio(n["thr"], k["thr"]), "",
                    ratio(n["p50"], k["p50"]), ratio(n["p99"], k["p99"])]
            if notify:
                line += [ratio(n["n50"], k["n50"]), ratio(n["n99"], k["n99"])]
            line += [ratio(n["cpu"], k["cpu"]), ratio(n["cpu_req"], k["cpu_req"]), "", ""]
            out.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *out)]
    print("settings: " + ", ".join(settings))
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    prev = None
    for line in out:
        if prev is not None and line[1] != prev:
            print()
        prev = line[1]
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    print()
    for wl in sorted({k[0] for k in groups}):
        for srv in sorted({r["server"] for r in rows if r["workload"] == wl}):
            b = best.get((wl, srv))
            print(f"highest rate held in every run: {wl} {srv}: {f'{b:g}/s' if b else 'none'}")
    busy = [x for x in map(other_pct, rows) if x is not None]
    if busy and max(busy) > 10:
        print(f"note: other processes used up to {max(busy):.0f} % of a core during some runs "
              "(column 'others %'); rerun on a quiet machine for figures to compare")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: compare_table.py TSV [TSV...]")
    main(sys.argv[1:])
