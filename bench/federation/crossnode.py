#!/usr/bin/env python3
"""Cross-node NOTIFY latency and restart recovery: our 2-node federation
(on-demand sharing, and full sharing) against Kamailio's 2-node DMQ cluster,
back to back (stdlib only).

    crossnode.py [--cluster node,node-full,kamailio] [-w 20] [-p 200] [-k K] [--rate 50]
                 [--restart-count 20] [--delay 2] [--skip-latency] [--skip-restart]
                 [--no-wait] [--out FILE]

Clusters (each phase on a freshly started cluster; nodes.sh / kamailio-dmq.sh):
  node       ours, federation mode on-demand-sharing, SIP 5301 / 5302
  node-full  ours, federation mode full-sharing, SIP 5301 / 5302
  kamailio   Kamailio 5.6, presence enable_dmq=1, one database per node,
             SIP 5391 / 5392

latency  ../cluster/crossnode.py's method: W watchers SUBSCRIBE through node
         2 to K presentities (default one each); each presentity is
         PUBLISHed once through node 1; then P modifying PUBLISHes through
         node 1 (<note>sJ</note>), round-robin, paced at --rate/s.  Latency =
         PUBLISH J sent -> the watcher has a NOTIFY carrying sJ or a newer
         state.  Reported: p50/p90/p99/max, pairs covered/exact/missing,
         duplicate NOTIFYs (same dialog, same state twice).
restart  --restart-count presentities are PUBLISHed through node 1
         (Expires 3600, <note>state-K</note>); node 2 is stopped and started
         again (ours: nodes.sh stop/start --nodes 2, which returns once both
         nodes see each other up; Kamailio: kamailio-dmq.sh stop/start
         --nodes 2 --keep-db, which returns once the port is bound); --delay
         s later a new watcher per presentity SUBSCRIBEs through node 2.
         Counted: initial NOTIFYs carrying the published state, and
         watchers that had a NOTIFY with it within --state-wait s (default
         3; ours on demand answers the first NOTIFY after up to query_wait
         = 200 ms, or sends the state in a second NOTIFY).  For ours, the
         queries node 2 sent (federation_queries_total).

Before every measured phase it waits (quiet.py) until no sipp / kamailio /
presence-node process that is not ours runs and the 1-minute load average
is below 0.8 (polling every 10 s, giving up after 40 minutes; the phase
then runs anyway and the record says so); the load averages are recorded.
--no-wait skips that (tiny trial runs only).  Record:
../results/fed-crossnode-<time>.json (or --out); a table is printed at the
end with ratios node/kamailio.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(BENCH, "cluster", "lib"))
sys.path.insert(0, HERE)
_spec = importlib.util.spec_from_file_location("cluster_crossnode", os.path.join(BENCH, "cluster", "crossnode.py"))
cn = importlib.util.module_from_spec(_spec)  # bench/cluster/crossnode.py: latency(), stats_ms(), run_all()
_spec.loader.exec_module(cn)
from quiet import wait_quiet  # noqa: E402
from sipua import UA, Subscription, Publication, rand_token  # noqa: E402

NODES = os.path.join(HERE, "nodes.sh")
KAM = os.path.join(HERE, "kamailio-dmq.sh")
ADMIN_SECRET = "bench-admin-secret-0123456789"
CLUSTERS = {
    "node": {"n1": 5301, "n2": 5302, "ours": True, "timeout": 5.0,
             "start": [NODES, "start", "--mode", "on-demand-sharing"], "stop": [NODES, "stop"],
             "restart2": [[NODES, "stop", "--nodes", "2"], [NODES, "start", "--nodes", "2"]]},
    "node-full": {"n1": 5301, "n2": 5302, "ours": True, "timeout": 5.0,
                  "start": [NODES, "start", "--mode", "full-sharing"], "stop": [NODES, "stop"],
                  "restart2": [[NODES, "stop", "--nodes", "2"], [NODES, "start", "--nodes", "2"]]},
    "kamailio": {"n1": 5391, "n2": 5392, "ours": False, "timeout": 10.0,
                 "start": [KAM, "start"], "stop": [KAM, "stop"], "settle": 3.0,
                 "restart2": [[KAM, "stop", "--nodes", "2"], [KAM, "start", "--nodes", "2", "--keep-db"]]},
}


def log(msg):
    print(msg, flush=True)


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), (r.stderr or r.stdout).strip()[-500:]))
    return r.stdout.strip()


def metric_sum(admin_port, name):
    req = urllib.request.Request("http://127.0.0.1:%d/metrics" % admin_port,
                                 headers={"Authorization": "Bearer " + ADMIN_SECRET})
    try:
        body = urllib.request.urlopen(req, timeout=2).read().decode()
    except OSError:
        return None
    return sum(float(m.group(1)) for m in re.finditer(r"^%s(?:\{[^}]*\})? ([0-9.e+]+)$" % name, body, re.M))


def quiet(a, what):
    if a.no_wait:
        la = [round(x, 2) for x in __import__("quiet").loadavg()]
        return {"load": la, "waited_s": 0, "gave_up": False, "skipped": True}
    q = wait_quiet(root=os.getpid(), log=log)
    log("quiet before %s: load %s after %d s%s" % (what, " ".join("%.2f" % x for x in q["load"]), q["waited_s"],
                                                    " -- GAVE UP after 40 min, machine busy: %s" % q["others"]
                                                    if q["gave_up"] else ""))
    return q


def start(c):
    sh(c["stop"])
    out = sh(c["start"])
    time.sleep(c.get("settle", 1.0))
    return out


# ------------------------------------------------------------------ restart recovery
def restart(c, a):
    run = rand_token(5)
    up, uw = UA("publisher"), UA("watcher")
    pubs, codes = [], []
    for k in range(a.restart_count):
        p = Publication(up, "zp%s-%d" % (run, k))
        r, _, _ = p.send(c["n1"], 3600, note="state-%d" % k)
        codes.append(r.code if r else None)
        pubs.append(p)
    time.sleep(1.0)  # replication of the PUBLISHes (ours: only full sharing sends them anywhere)
    t0 = time.monotonic()
    for cmd in c["restart2"]:
        sh(cmd)
    restart_s = time.monotonic() - t0
    time.sleep(a.delay)
    q0 = metric_sum(6302, "federation_queries_total") if c["ours"] else None
    items = []
    for k, p in enumerate(pubs):
        s = Subscription(uw, "zw%s-%d" % (run, k), p.user)
        r, ts, _ = s.send(c["n2"], 600)
        first, _ = uw.wait_notify(s.mine, 6)
        mark = ">state-%d<" % k
        with_state, _ = uw.wait_notify(lambda m, s=s, mark=mark: s.mine(m) and mark in m.body, a.state_wait)
        items.append({"subscribe": r.code if r else None,
                      "initial_notify_ms": round((first.t - ts) * 1000, 2) if first else None,
                      "initial_has_state": bool(first and mark in first.body),
                      "state_ms": round((with_state.t - ts) * 1000, 2) if with_state else None})
    q1 = metric_sum(6302, "federation_queries_total") if c["ours"] else None
    for p in pubs:
        if p.etag:
            p.send(c["n1"], 0, if_match="current", body=False)
    up.close(); uw.close()
    n = len(items)
    res = {"count": n, "publish_codes": codes, "restart_s": round(restart_s, 2), "delay_s": a.delay,
           "state_wait_s": a.state_wait,
           "initial_with_state": sum(i["initial_has_state"] for i in items),
           "state_within_wait": sum(i["state_ms"] is not None for i in items),
           "queries_node2": None if q0 is None or q1 is None else int(q1 - q0),
           "state_ms": cn.stats_ms([i["state_ms"] / 1000 for i in items if i["state_ms"] is not None]),
           "initial_notify_ms": cn.stats_ms([i["initial_notify_ms"] / 1000 for i in items
                                             if i["initial_notify_ms"] is not None]),
           "items": items}
    return res


def run_cluster(name, a):
    c = dict(CLUSTERS[name])
    if a.timeout is not None:
        c["timeout"] = a.timeout
    rec = {"cluster": name, "ports": [c["n1"], c["n2"]]}
    try:
        if not a.skip_latency:
            rec["latency_quiet"] = quiet(a, "%s latency" % name)
            log("%s: %s" % (name, start(c)))
            rec["latency"] = cn.latency(c, a)
            L = rec["latency"]
            log("%s: latency %s; covered %d/%d, exact %d, missing %d, duplicates %d, publish failed %d, rate %.1f/s"
                % (name, L["latency_ms"], L["pairs_covered"], L["pairs_expected"], L["pairs_exact"],
                   L["pairs_missing"], L["duplicates"], L["publish_failed"], L["rate_achieved"]))
            sh(c["stop"])
        if not a.skip_restart:
            rec["restart_quiet"] = quiet(a, "%s restart" % name)
            log("%s: %s" % (name, start(c)))
            rec["restart"] = restart(c, a)
            R = rec["restart"]
            log("%s: restart of node 2 (%.1f s): initial NOTIFY with the state %d/%d, state within %g s %d/%d, "
                "queries %s, state after %s ms" % (name, R["restart_s"], R["initial_with_state"], R["count"],
                                                   a.state_wait, R["state_within_wait"], R["count"],
                                                   R["queries_node2"], R["state_ms"]))
    finally:
        subprocess.run(c["stop"], capture_output=True)
    return rec


def table(recs):
    by = {r["cluster"]: r for r in recs}
    cols = [n for n in ("node", "node-full", "kamailio") if n in by]
    rows = []

    def lat(r, k):
        return r.get("latency", {}).get("latency_ms", {}).get(k)
    for k in ("p50", "p90", "p99", "max"):
        vals = [lat(by[n], k) for n in cols]
        rows.append(["cross-node NOTIFY %s ms" % k] + ["-" if v is None else "%g" % v for v in vals])
    rows.append(["pairs covered/exact/missing"] + [
        "%s/%s/%s" % (by[n]["latency"]["pairs_covered"], by[n]["latency"]["pairs_exact"],
                      by[n]["latency"]["pairs_missing"]) if "latency" in by[n] else "-" for n in cols])
    rows.append(["duplicate NOTIFYs"] + [str(by[n].get("latency", {}).get("duplicates", "-")) for n in cols])
    rows.append(["load before latency"] + ["%.2f" % by[n]["latency_quiet"]["load"][0] if "latency_quiet" in by[n]
                                           else "-" for n in cols])
    rows.append(["restart: initial NOTIFY with state"] + [
        "%d/%d" % (by[n]["restart"]["initial_with_state"], by[n]["restart"]["count"]) if "restart" in by[n] else "-"
        for n in cols])
    rows.append(["restart: state within wait"] + [
        "%d/%d" % (by[n]["restart"]["state_within_wait"], by[n]["restart"]["count"]) if "restart" in by[n] else "-"
        for n in cols])
    rows.append(["restart: queries by node 2"] + [
        str(by[n]["restart"]["queries_node2"]) if "restart" in by[n] and by[n]["restart"]["queries_node2"] is not None
        else "-" for n in cols])
    rows.append(["restart: state p50 ms"] + [
        str(by[n]["restart"]["state_ms"].get("p50", "-")) if "restart" in by[n] else "-" for n in cols])
    head = [""] + cols
    if "kamailio" in by:
        for n in [x for x in cols if x != "kamailio"]:
            head.append("%s/kam" % n)
            for row, k in zip(rows, ("p50", "p90", "p99", "max")):
                v, kv = lat(by[n], k), lat(by["kamailio"], k)
                row.append("%.2fx" % (v / kv) if v is not None and kv else "")
            for row in rows[4:]:
                row.append("")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", default="node,node-full,kamailio")
    ap.add_argument("-w", "--watchers", type=int, default=20)
    ap.add_argument("-p", "--publishes", type=int, default=200)
    ap.add_argument("-k", "--presentities", type=int, default=0, help="default: one per watcher")
    ap.add_argument("--rate", type=float, default=50.0, help="PUBLISHes per second")
    ap.add_argument("--timeout", type=float, default=None, help="s to wait for the last NOTIFYs (5 ours, 10 Kamailio)")
    ap.add_argument("--restart-count", type=int, default=20)
    ap.add_argument("--delay", type=float, default=2.0, help="s after node 2 is back before subscribing")
    ap.add_argument("--state-wait", type=float, default=3.0)
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-restart", action="store_true")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine (trial runs)")
    ap.add_argument("--out")
    a = ap.parse_args()
    names = [n.strip() for n in a.cluster.split(",") if n.strip()]
    for n in names:
        if n not in CLUSTERS:
            ap.error("unknown cluster %s" % n)
    recs, out = cn.run_all(names, run_cluster, a, "fed-crossnode")
    table([r for r in recs if "error" not in r])
    print("record: %s" % out)


if __name__ == "__main__":
    main()
