#!/usr/bin/env python3
"""Database round trips per request of our node on PostgreSQL.

    roundtrips.py [-n 2000] [--rate 500] [--idle 5] [--top 12] [--no-start] [--workloads "publish subscribe"]

Starts the private PostgreSQL (pg.sh) and our 2-node cluster (nodes.sh
start --mode ha) unless --no-start, measures the statements the nodes run
while idle for --idle s (the background: expiry sweeps, tag checks), then
for each workload resets PostgreSQL's counters, runs ../load.sh against node
1 (127.0.0.1:5081) with N requests at RATE/s, and reads
pg_stat_statements (database `presence`; pg.sh preloads the module) and
pg_stat_database (xact_commit + xact_rollback).  The background rate times
the run's wall time is subtracted.  Prints, per workload:

  statements per request, transactions per request, DB time per request,
  WAL records and WAL flushes (fsync) per request (pg_stat_wal),
  and the top statements by calls: calls per request, mean ms, total ms.

Statements run inside another one (foreign-key checks: pg_stat_statements
toplevel = false) are listed as "(nested)" and not counted as round trips.
A SUBSCRIBE request here is the SUBSCRIBE and the initial NOTIFY it causes
(a new watcher of a presentity with no publication).  Writes
../results/roundtrips-<time>.json.  Stops the cluster at the end (not with
--no-start).
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)


def psql(sql, db="presence"):
    r = subprocess.run([os.path.join(HERE, "pg.sh"), "psql", "-d", db, "-F", "\t", "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("psql: %s" % r.stderr.strip())
    return [ln.split("\t") for ln in r.stdout.splitlines() if ln.strip()]


def snapshot():
    st = {}
    for qid, top, calls, total, rows, q in psql(
            "select s.queryid, s.toplevel, s.calls, s.total_exec_time, s.rows, "
            "regexp_replace(s.query, '\\s+', ' ', 'g') "
            "from pg_stat_statements s join pg_database d on d.oid = s.dbid "
            "where d.datname = 'presence' and s.query not ilike '%pg_stat%' and s.query not ilike '%pg_database%'"):
        if top != "t":  # run inside another statement (e.g. a foreign-key check): no round trip
            qid, q = qid + "-nested", "(nested) " + q
        st[qid] = {"calls": int(calls), "total_ms": float(total), "rows": int(rows), "query": q,
                   "toplevel": top == "t"}
    [[commits, rollbacks]] = psql("select xact_commit, xact_rollback from pg_stat_database where datname = 'presence'")
    [[syncs, sync_ms, records]] = psql("select wal_sync, wal_sync_time, wal_records from pg_stat_wal")
    return {"stmts": st, "xacts": int(commits) + int(rollbacks), "t": time.monotonic(),
            "wal_sync": int(syncs), "wal_sync_ms": float(sync_ms), "wal_records": int(records)}


def reset():
    psql("select pg_stat_statements_reset()")
    psql("select pg_stat_reset()")
    psql("select pg_stat_reset_shared('wal')")


def delta(a, b):
    out = {}
    for qid, v in b["stmts"].items():
        u = a["stmts"].get(qid, {"calls": 0, "total_ms": 0.0, "rows": 0})
        d = {"calls": v["calls"] - u["calls"], "total_ms": v["total_ms"] - u["total_ms"],
             "rows": v["rows"] - u["rows"], "query": v["query"], "toplevel": v["toplevel"]}
        if d["calls"] > 0:
            out[qid] = d
    return {"stmts": out, "xacts": b["xacts"] - a["xacts"], "wall": b["t"] - a["t"],
            "wal_sync": b["wal_sync"] - a["wal_sync"], "wal_sync_ms": b["wal_sync_ms"] - a["wal_sync_ms"],
            "wal_records": b["wal_records"] - a["wal_records"]}


def settle():
    time.sleep(1.5)  # backends flush their statistics at most once a second when idle


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--count", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--workloads", default="publish subscribe")
    ap.add_argument("--no-start", action="store_true")
    a = ap.parse_args()
    if not a.no_start:
        subprocess.run([os.path.join(HERE, "nodes.sh"), "stop"], capture_output=True)
        print(subprocess.run([os.path.join(HERE, "nodes.sh"), "start", "--mode", "ha"], check=True,
                             capture_output=True, text=True).stdout.strip())
        time.sleep(1)
    rec = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "count": a.count, "rate": a.rate, "workloads": {}}
    try:
        # background: what two idle nodes run per second
        reset(); settle()
        s0 = snapshot()
        time.sleep(a.idle)
        settle()
        bg = delta(s0, snapshot())
        bg_rate = {q: v["calls"] / bg["wall"] for q, v in bg["stmts"].items()}
        bg_ms = {q: v["total_ms"] / bg["wall"] for q, v in bg["stmts"].items()}
        bg_x = bg["xacts"] / bg["wall"]
        rec["background_per_s"] = {"statements": round(sum(bg_rate.values()), 2), "xacts": round(bg_x, 2),
                                   "top": sorted(([round(r, 2), bg["stmts"][q]["query"][:120]]
                                                  for q, r in bg_rate.items()), reverse=True)[:5]}
        print("background (2 idle nodes): %.1f statements/s, %.1f transactions/s"
              % (sum(bg_rate.values()), bg_x))
        for wl in a.workloads.split():
            reset(); settle()
            s1 = snapshot()
            out = os.path.join(BENCH, "results", "roundtrips-%s-%s" % (time.strftime("%Y%m%d-%H%M%S"), wl))
            env = dict(os.environ, OUT_DIR=out)
            subprocess.run([os.path.join(BENCH, "load.sh"), "127.0.0.1", "5081", wl, str(a.rate), str(a.count)],
                           env=env, capture_output=True, text=True)
            settle()
            d = delta(s1, snapshot())
            summ = json.load(open(os.path.join(out, "summary.json")))
            ok = summ["roles"]["main"].get("calls_ok", 0) or 0
            if not ok:
                print("%s: no successful request (see %s)" % (wl, out)); continue
            rows = []
            for q, v in d["stmts"].items():
                calls = v["calls"] - bg_rate.get(q, 0.0) * d["wall"]
                ms = v["total_ms"] - bg_ms.get(q, 0.0) * d["wall"]
                rows.append({"toplevel": v["toplevel"], "calls": round(calls, 1), "per_request": round(calls / ok, 3),
                             "mean_ms": round(v["total_ms"] / v["calls"], 3), "total_ms": round(ms, 1),
                             "rows": v["rows"], "query": v["query"]})
            rows.sort(key=lambda r: -r["calls"])
            stm = sum(max(0.0, r["calls"]) for r in rows if r["toplevel"])
            xacts = d["xacts"] - bg_x * d["wall"]
            dbms = sum(max(0.0, r["total_ms"]) for r in rows if r["toplevel"])
            w = {"ok_requests": ok, "wall_s": round(d["wall"], 1), "statements": round(stm),
                 "statements_per_request": round(stm / ok, 2), "xacts_per_request": round(xacts / ok, 2),
                 "db_exec_ms_per_request": round(dbms / ok, 3),
                 "wal_flushes_per_request": round(d["wal_sync"] / ok, 3),
                 "wal_flush_ms_per_flush": round(d["wal_sync_ms"] / d["wal_sync"], 3) if d["wal_sync"] else None,
                 "wal_records_per_request": round(d["wal_records"] / ok, 2),
                 "top": rows[:a.top], "results": out}
            rec["workloads"][wl] = w
            print()
            print("%s: %d requests ok at %d/s: %.2f statements/request, %.2f transactions/request, "
                  "%.3f ms statement execution/request"
                  % (wl.upper(), ok, a.rate, w["statements_per_request"], w["xacts_per_request"],
                     w["db_exec_ms_per_request"]))
            print("  WAL: %.2f records/request, %.3f flushes (fsync) per request, %s ms per flush "
                  "(group commit: one flush serves every commit waiting for it)"
                  % (w["wal_records_per_request"], w["wal_flushes_per_request"], w["wal_flush_ms_per_flush"]))
            print("  %8s %7s %8s %9s  %s" % ("calls", "per req", "mean ms", "total ms", "statement"))
            for r in rows[:a.top]:
                print("  %8.0f %7.3f %8.3f %9.1f  %s" % (r["calls"], r["per_request"], r["mean_ms"],
                                                         r["total_ms"], r["query"][:110]))
    finally:
        if not a.no_start:
            subprocess.run([os.path.join(HERE, "nodes.sh"), "stop"], capture_output=True)
    path = os.path.join(BENCH, "results", "roundtrips-%s.json" % time.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as f:
        json.dump(rec, f, indent=1)
    print("\nrecord: %s" % path)


if __name__ == "__main__":
    sys.exit(main())
