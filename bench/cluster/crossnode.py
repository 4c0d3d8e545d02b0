#!/usr/bin/env python3
"""Cross-node NOTIFY latency and the four cross-node behaviours, for our
2-node cluster and for the Kamailio shared-DB cluster (stdlib only).

    crossnode.py [--cluster node|kamailio|both] [--mode ha|lb] [-w 20] [-p 200] [-k K] [--rate 50]
                 [--no-start] [--skip-behaviours] [--out FILE]

For each cluster (default both: ours, then Kamailio's), started fresh with
nodes.sh (--mode ha: vip active on node 1, so node 1 sends every NOTIFY;
--mode lb: each node's own tag, so node 2 sends the NOTIFYs of its watchers,
woken through the database) or kamailio.sh unless --no-start:

latency  W watchers SUBSCRIBE through node 2 (Expires 3600) to K presentities
         (default K = W: one watcher each; -k 1: all on one presentity); each
         presentity is PUBLISHed once through node 1; then P modifying
         PUBLISHes (SIP-If-Match, <note>sJ</note>) go through node 1,
         round-robin over the K presentities, paced at --rate per second
         (not waiting for the NOTIFYs).  Latency = PUBLISH J sent -> the
         watcher receives a NOTIFY carrying sJ or a newer state of that
         presentity ("covered": Kamailio's notifier coalesces changes made
         within its polling period, so a change may only be seen through a
         later one).  Reported: p50/p99/max, how many (publish, watcher)
         pairs got exactly their own NOTIFY, how many were never covered
         within --timeout s after the last PUBLISH (default 5 s for ours,
         20 s for Kamailio), duplicate NOTIFYs (same dialog, same state).
behaviours, each yes/no:
  notify   the latency phase: every PUBLISH through node 1 reached every
           watcher subscribed through node 2 (covered), no PUBLISH failed
  refresh  SUBSCRIBE through node 1, refresh (Expires 600) and unsubscribe
           (Expires 0) in the dialog through node 2 -> 200/202 both (3 trials)
  etag     PUBLISH through node 1 -> E1; refresh with E1 through node 2;
           modify through node 1 with node 2's etag; remove through node 2
           -> 200 each (3 trials)
  expiry   after a restart (Kamailio with DB_UPDATE_PERIOD=5, CLEAN_PERIOD=5
           so that it expires within seconds; its defaults are 100 s): 6
           watchers SUBSCRIBE with Expires 10, 3 through each node; after
           expiry + --window s (default 8 for ours, 20 for Kamailio), each
           subscription got exactly one terminated NOTIFY -> yes

Ports: ours 5081 (node 1) / 5082 (node 2), Kamailio 5091 / 5092.  The
record goes to ../results/crossnode-<time>.json (or --out); a summary table
(node, Kamailio, ratio) is printed at the end.
"""
import argparse
import collections
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "lib"))
from sipua import UA, Subscription, Publication, rand_token  # noqa: E402

CLUSTERS = {
    "node": {"n1": 5081, "n2": 5082, "start": [os.path.join(HERE, "nodes.sh"), "start", "--mode", "ha"],
             "start_expiry": [os.path.join(HERE, "nodes.sh"), "start", "--mode", "ha"],
             "stop": [os.path.join(HERE, "nodes.sh"), "stop"], "timeout": 5.0, "window": 8.0},
    "kamailio": {"n1": 5091, "n2": 5092, "start": [os.path.join(HERE, "kamailio.sh"), "start"],
                 "start_expiry": [os.path.join(HERE, "kamailio.sh"), "start",
                                  "-A", "DB_UPDATE_PERIOD=5", "-A", "CLEAN_PERIOD=5"],
                 "stop": [os.path.join(HERE, "kamailio.sh"), "stop"], "timeout": 20.0, "window": 20.0},
}
NOTE = re.compile(r"<note>s(\d+)</note>")


def pct(vals, p):
    s = sorted(vals)
    if not s:
        return None
    k = max(1, math.ceil(p / 100.0 * len(s)))
    return s[min(k, len(s)) - 1]


def stats_ms(vals):
    if not vals:
        return {"n": 0}
    v = [x * 1000 for x in vals]
    return {"n": len(v), "p50": round(pct(v, 50), 2), "p90": round(pct(v, 90), 2),
            "p99": round(pct(v, 99), 2), "max": round(max(v), 2), "min": round(min(v), 2)}


def sh(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), (r.stderr or r.stdout).strip()[-500:]))
    return r.stdout.strip()


def ok2xx(r):
    return r is not None and 200 <= r.code < 300


# ------------------------------------------------------------------ latency
def latency(c, a):
    run = rand_token(5)
    n1, n2 = c["n1"], c["n2"]
    k = a.presentities or a.watchers
    uw, up = UA("watcher"), UA("publisher")
    subs = []
    setup = collections.Counter()
    for i in range(a.watchers):
        s = Subscription(uw, "lw%s-%d" % (run, i), "lp%s-%d" % (run, i % k))
        r, _, _ = s.send(n2, 3600)
        setup["subscribe %s" % (r.code if r else None)] += 1
        subs.append(s)
    for s in subs:
        n, _ = uw.wait_notify(s.mine, 5)
        setup["initial notify %s" % ("yes" if n else "no")] += 1
    pubs = [Publication(up, "lp%s-%d" % (run, i)) for i in range(k)]
    for p in pubs:
        r, _, _ = p.send(n1, 3600, note="init")
        setup["initial publish %s" % (r.code if r else None)] += 1
    # let the initial state reach the watchers (Kamailio: its notifier polls)
    deadline = time.monotonic() + c["timeout"]
    while time.monotonic() < deadline:
        with uw.lock:
            got = {m.h("call-id") for m in uw.notifies if "<note>init</note>" in m.body}
        if all(s.callid in got for s in subs):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    idx0 = len(uw.notifies)
    sent = []  # (j, presentity index, t_send, code)
    t_start = time.monotonic()
    for j in range(a.publishes):
        due = t_start + j / a.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        i = j % k
        r, t0, t1 = pubs[i].send(n1, 3600, note="s%d" % j, if_match="current")
        sent.append((j, i, t0, r.code if r else None, (t1 - t0) if r else None))
    t_last = time.monotonic()
    achieved = a.publishes / max(1e-9, t_last - t_start)
    by_pres = collections.defaultdict(list)
    for s in subs:
        by_pres[int(s.pres_user.rsplit("-", 1)[1])].append(s)
    expected = a.publishes * (a.watchers // k) + sum(1 for j in range(a.publishes) if j % k < a.watchers % k)
    # wait for every pair to be covered (the newest state of each presentity seen by each of its watchers)
    last_j = {}
    for j, i, _, code, _ in sent:
        if code == 200:
            last_j[i] = j
    deadline = t_last + c["timeout"]
    while time.monotonic() < deadline:
        with uw.lock:
            seen = collections.defaultdict(int)
            for m in uw.notifies[idx0:]:
                mm = NOTE.search(m.body)
                if mm:
                    cid = m.h("call-id")
                    seen[cid] = max(seen[cid], int(mm.group(1)))
        if all(seen.get(s.callid, -1) >= last_j.get(i, -1) for i, ss in by_pres.items() for s in ss):
            break
        time.sleep(0.1)
    time.sleep(0.3)
    with uw.lock:
        notes = list(uw.notifies[idx0:])
    per_dialog = collections.defaultdict(list)  # callid -> [(t, J)]
    dup = collections.Counter()
    for m in notes:
        mm = NOTE.search(m.body)
        if not mm:
            continue
        jj = int(mm.group(1))
        cid = m.h("call-id")
        per_dialog[cid].append((m.t, jj))
        dup[(cid, jj)] += 1
    covered, exact, missing, failed = [], 0, 0, 0
    for j, i, t0, code, _ in sent:
        if code != 200:
            failed += 1
            continue
        for s in by_pres[i]:
            arr = [(t, jj) for t, jj in per_dialog.get(s.callid, []) if jj >= j]
            if not arr:
                missing += 1
                continue
            covered.append(min(t for t, _ in arr) - t0)
            if any(jj == j for _, jj in arr):
                exact += 1
    rts = [x[4] for x in sent if x[4] is not None]
    res = {
        "watchers": a.watchers, "presentities": k, "publishes": a.publishes, "rate_requested": a.rate,
        "rate_achieved": round(achieved, 1), "setup": dict(setup),
        "publish_codes": dict(collections.Counter(str(x[3]) for x in sent)),
        "publish_failed": failed, "pairs_expected": expected, "pairs_covered": len(covered),
        "pairs_exact": exact, "pairs_missing": missing,
        "duplicates": sum(v - 1 for v in dup.values() if v > 1),
        "latency_ms": stats_ms(covered), "publish_rt_ms": stats_ms(rts),
        "notifies_received": len(notes),
    }
    for s in subs:
        s.send(n2, 0)
    for p in pubs:
        if p.etag:
            p.send(n1, 0, if_match="current", body=False)
    uw.close(); up.close()
    res["ok"] = failed == 0 and missing == 0 and len(covered) == expected
    return res


# ------------------------------------------------------------------ refresh / unsubscribe
def refresh(c, a):
    run = rand_token(5)
    uw = UA("watcher")
    trials = []
    for t in range(a.trials):
        s = Subscription(uw, "rw%s-%d" % (run, t), "rp%s-%d" % (run, t))
        r0, _, _ = s.send(c["n1"], 600)
        uw.wait_notify(s.mine, 5)
        r1, _, _ = s.send(c["n2"], 600)
        r2, _, _ = s.send(c["n2"], 0)
        trials.append({"subscribe_n1": r0.code if r0 else None, "refresh_n2": r1.code if r1 else None,
                       "unsubscribe_n2": r2.code if r2 else None})
        if not ok2xx(r2):
            s.send(c["n1"], 0)
    uw.close()
    ok = all(ok2xx_code(t["refresh_n2"]) and ok2xx_code(t["unsubscribe_n2"]) for t in trials)
    return {"trials": trials, "ok": ok}


def ok2xx_code(code):
    return code is not None and 200 <= code < 300


# ------------------------------------------------------------------ foreign etag
def etag(c, a):
    run = rand_token(5)
    up = UA("publisher")
    trials = []
    for t in range(a.trials):
        p = Publication(up, "ep%s-%d" % (run, t))
        r0, _, _ = p.send(c["n1"], 600, note="v1")
        r1, _, _ = p.send(c["n2"], 600, if_match=p.etag, body=False)
        r2, _, _ = p.send(c["n1"], 600, note="v2", if_match="current")
        r3, _, _ = p.send(c["n2"], 0, if_match="current", body=False)
        trials.append({"publish_n1": r0.code if r0 else None, "refresh_n2_with_n1_etag": r1.code if r1 else None,
                       "modify_n1_with_n2_etag": r2.code if r2 else None,
                       "remove_n2": r3.code if r3 else None})
    up.close()
    ok = all(v == 200 for t in trials for v in t.values())
    return {"trials": trials, "ok": ok}


# ------------------------------------------------------------------ expiry
def expiry(c, a, window):
    run = rand_token(5)
    uw = UA("watcher")
    subs = []
    for t in range(a.expiry_count):
        node = c["n1"] if t % 2 == 0 else c["n2"]
        s = Subscription(uw, "xw%s-%d" % (run, t), "xp%s-%d" % (run, t))
        r, _, _ = s.send(node, a.expires)
        subs.append((s, node, r.code if r else None))
    time.sleep(a.expires + window)
    out = []
    for s, node, code in subs:
        ns = [m for m in uw.notifies if s.mine(m)]
        term = [m for m in ns if m.sub_state().startswith("terminated")]
        out.append({"via": node, "subscribe": code, "notifies": len(ns), "terminated": len(term),
                    "terminated_from_ports": [m.src[1] for m in term],
                    "terminated_states": [m.sub_state() for m in term]})
    uw.close()
    return {"expires": a.expires, "window_s": window, "subscriptions": out,
            "terminated_per_subscription": [o["terminated"] for o in out],
            "ok": all(o["terminated"] == 1 for o in out)}


def run_cluster(name, a):
    c = dict(CLUSTERS[name])
    if name == "node":
        c["start"] = c["start_expiry"] = c["start"][:-1] + [a.mode]
    rec = {"cluster": name, "ports": [c["n1"], c["n2"]]}
    timeout = a.timeout if a.timeout is not None else c["timeout"]
    c = dict(c, timeout=timeout)
    window = a.window if a.window is not None else c["window"]
    try:
        if not a.no_start:
            sh(c["stop"]); print("%s: %s" % (name, sh(c["start"])), flush=True)
            time.sleep(1)
        rec["latency"] = latency(c, a)
        L = rec["latency"]
        print("%s: latency %s; covered %d/%d, exact %d, missing %d, duplicates %d, publish failed %d, rate %.1f/s"
              % (name, L["latency_ms"], L["pairs_covered"], L["pairs_expected"], L["pairs_exact"],
                 L["pairs_missing"], L["duplicates"], L["publish_failed"], L["rate_achieved"]), flush=True)
        if not a.skip_behaviours:
            rec["refresh"] = refresh(c, a)
            print("%s: refresh/unsubscribe via node 2: %s" % (name, rec["refresh"]["trials"]), flush=True)
            rec["etag"] = etag(c, a)
            print("%s: foreign etag: %s" % (name, rec["etag"]["trials"]), flush=True)
            if not a.no_start:
                sh(c["stop"]); print("%s: %s" % (name, sh(c["start_expiry"])), flush=True)
                time.sleep(1)
            rec["expiry"] = expiry(c, a, window)
            print("%s: expiry: terminated NOTIFYs per subscription %s (from ports %s)"
                  % (name, rec["expiry"]["terminated_per_subscription"],
                     sorted({p for o in rec["expiry"]["subscriptions"] for p in o["terminated_from_ports"]})),
                  flush=True)
    finally:
        if not a.no_start:
            subprocess.run(c["stop"], capture_output=True)
    return rec


def yn(rec, key):
    if key == "notify":
        v = rec.get("latency", {}).get("ok")
    else:
        v = rec.get(key, {}).get("ok")
    return "-" if v is None else ("yes" if v else "no")


def table(recs):
    names = [r["cluster"] for r in recs]
    rows = []
    def lat(r, k):
        return r.get("latency", {}).get("latency_ms", {}).get(k)
    for k in ("p50", "p99", "max"):
        vals = [lat(r, k) for r in recs]
        ratio = ""
        if len(recs) == 2 and all(v is not None for v in vals) and vals[1]:
            ratio = "%.4fx" % (vals[0] / vals[1])
        rows.append(["cross-node NOTIFY %s ms" % k] + ["-" if v is None else "%g" % v for v in vals] + [ratio])
    rows.append(["pairs covered / exact / missing"] + [
        "%s/%s/%s" % (r["latency"]["pairs_covered"], r["latency"]["pairs_exact"], r["latency"]["pairs_missing"])
        if "latency" in r else "-" for r in recs] + [""])
    rows.append(["duplicate NOTIFYs"] + [str(r.get("latency", {}).get("duplicates", "-")) for r in recs] + [""])
    for key, label in (("notify", "(a) NOTIFY across nodes"), ("refresh", "(b) refresh/unsub via other node"),
                       ("etag", "(c) PUBLISH with other node's etag"), ("expiry", "(d) exactly one terminated NOTIFY")):
        rows.append([label] + [yn(r, key) for r in recs] + [""])
    head = ["", *names] + (["node/kam"] if len(recs) == 2 else [])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def run_all(names, run_cluster, a, prefix):
    """Run each cluster in turn (a failure is recorded and the next one
    still runs) and write the record to a.out or
    ../results/PREFIX-<time>.json; returns (records, path)."""
    recs = []
    for n in names:
        try:
            recs.append(run_cluster(n, a))
        except Exception as e:  # record and go on with the other cluster
            print("%s: failed: %s" % (n, e), file=sys.stderr)
            recs.append({"cluster": n, "error": str(e)})
    out = a.out or os.path.join(BENCH, "results", "%s-%s.json" % (prefix, time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"argv": sys.argv, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "clusters": recs}, f, indent=1)
    return recs, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster", choices=["node", "kamailio", "both"], default="both")
    ap.add_argument("--mode", choices=["ha", "lb"], default="ha", help="our cluster's mode (nodes.sh)")
    ap.add_argument("-w", "--watchers", type=int, default=20)
    ap.add_argument("-p", "--publishes", type=int, default=200)
    ap.add_argument("-k", "--presentities", type=int, default=0, help="default: one per watcher")
    ap.add_argument("--rate", type=float, default=50.0, help="PUBLISHes per second")
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--window", type=float, default=None)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--expires", type=int, default=10)
    ap.add_argument("--expiry-count", type=int, default=6)
    ap.add_argument("--no-start", action="store_true", help="use the running cluster(s); no restart for expiry")
    ap.add_argument("--skip-behaviours", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    names = ["node", "kamailio"] if a.cluster == "both" else [a.cluster]
    recs, out = run_all(names, run_cluster, a, "crossnode")
    table(recs)
    print("record: %s" % out)


if __name__ == "__main__":
    main()
