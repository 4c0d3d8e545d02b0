#!/usr/bin/env python3
"""Cluster messages per PUBLISH and cross-location NOTIFY latency in a
federation of N single-node locations (memory storage), for N = 2, 4, 8.

    bench/federation/messages.py [--sizes 2,4,8] [-p 200] [-w 10] [--rate 100]
                                 [--mode on-demand-sharing|full-sharing]

For each N, N fresh `presence-node` processes are started on loopback
(SIP 127.0.0.1:5201.., admin 6201.., cluster channel 7201..), every node its
own location and tag, one cluster secret.  Two layouts are measured:

  one-watching   W watchers SUBSCRIBE through node 2 only, to one
                 presentity each; P modifying PUBLISHes round-robin over the
                 W presentities go through node 1, paced at --rate/s.
  all-watching   each of the W presentities is watched through every node
                 2..N (W watchers per node): every location is interested.

Reported per layout: cluster `publish` messages node 1 sent per PUBLISH
(from its /metrics), what a seed-style broadcast would send (N-1), and the
PUBLISH -> remote NOTIFY latency p50/p99 (each NOTIFY carrying that
PUBLISH's note), and how many (PUBLISH, watcher) NOTIFYs never came.  On-demand sharing should cost one message per *interested*
location (1 in one-watching, whatever N), not N-1.

The nodes' configs and logs go to bench/run/federation/.  Stdlib only
(plus the node's own executable in .venv/bin).
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(BENCH, "cluster", "lib"))
from sipua import UA, Publication, Subscription  # noqa: E402

EXE = os.path.join(ROOT, ".venv", "bin", "presence-node")
RUN = os.path.join(BENCH, "run", "federation")
ADMIN_SECRET = "bench-admin-secret-0123456789"
CLUSTER_SECRET = "bench-cluster-secret-0123456789"


def config(i: int, n: int, mode: str) -> str:
    peers = "\n".join(
        f"    - {{id: n{j}, address: '127.0.0.1:{7200 + j}'}}" for j in range(1, n + 1) if j != i
    )
    return f"""node_id: n{i}
cluster_id: bench
log_level: warning
admin_secret_file: {RUN}/admin-secret
state_dir: {RUN}/state-n{i}
sharing_tags: {{n{i}: active}}
federation:
  mode: {mode}
  listen: 127.0.0.1:{7200 + i}
  secret_file: {RUN}/cluster-secret
  peers:
{peers}
"""


def start(n: int, mode: str) -> list[subprocess.Popen]:
    os.makedirs(RUN, exist_ok=True)
    for name, value in (("admin-secret", ADMIN_SECRET), ("cluster-secret", CLUSTER_SECRET)):
        path = os.path.join(RUN, name)
        with open(path, "w") as f:
            f.write(value)
        os.chmod(path, 0o600)
    procs = []
    for i in range(1, n + 1):
        cfg = os.path.join(RUN, f"n{i}.yaml")
        with open(cfg, "w") as f:
            f.write(config(i, n, mode))
        log = open(os.path.join(RUN, f"n{i}.log"), "w")
        procs.append(subprocess.Popen(
            [EXE, "--config", cfg, "--sip", f"127.0.0.1:{5200 + i}", "--admin", f"127.0.0.1:{6200 + i}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    deadline = time.monotonic() + 30
    while True:
        views = [admin(i, "/cluster") for i in range(1, n + 1)]
        if all(v is not None and all(p["up"] for p in v["peers"]) for v in views):
            return procs
        if time.monotonic() > deadline:
            stop(procs)
            sys.exit("the nodes did not all come up and see each other within 30 s")
        time.sleep(0.2)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def admin(i: int, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{6200 + i}{path}",
                                 headers={"Authorization": f"Bearer {ADMIN_SECRET}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return None
    if path == "/metrics":
        return body
    import json
    return json.loads(body)


def sent(i: int, kind: str) -> float:
    m = re.search(r'^cluster_messages_sent_total\{kind="%s"\} ([0-9.e+]+)$' % kind, admin(i, "/metrics") or "", re.M)
    return float(m.group(1)) if m else 0.0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def run_layout(n: int, layout: str, p: int, w: int, rate: float) -> dict:
    ua = UA("fed-bench")
    nodes = [2] if layout == "one-watching" else range(2, n + 1)
    for node in nodes:
        for k in range(w):
            s = Subscription(ua, f"w{node}-{k}", f"p{layout[0]}{k}")
            r, _, _ = s.send(5200 + node, 3600)
            assert r is not None and r.code == 200, r
    time.sleep(1.0)  # interests reach node 1
    pubs = [Publication(ua, f"p{layout[0]}{k}") for k in range(w)]
    for pb in pubs:
        pb.send(5201, 3600, note="init")
    time.sleep(0.5)
    before = sent(1, "publish")
    t_sent = {}
    start_i = len(ua.notifies)
    t0 = time.monotonic()
    for j in range(p):
        pb = pubs[j % w]
        note = f"s{j}"
        t_sent[note] = time.monotonic()
        r, _, _ = pb.send(5201, 3600, note=note, if_match="current")
        assert r is not None and r.code == 200, r
        delay = t0 + (j + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(1.0)
    lat = []
    seen: dict[str, int] = {}
    for m in ua.notifies[start_i:]:
        found = re.search(r"<note>(s\d+)</note>", m.body)
        if found and found.group(1) in t_sent:
            note = found.group(1)
            lat.append((m.t - t_sent[note]) * 1000)
            seen[note] = seen.get(note, 0) + 1
    missing = sum(len(nodes) - seen.get(note, 0) for note in t_sent)
    per_publish = (sent(1, "publish") - before) / p
    ua.close()
    return {"n": n, "layout": layout, "per_publish": per_publish, "broadcast": n - 1,
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "missing": missing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,4,8")
    ap.add_argument("-p", type=int, default=200, help="PUBLISHes per layout")
    ap.add_argument("-w", type=int, default=10, help="watchers (one presentity each)")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--mode", default="on-demand-sharing", choices=["on-demand-sharing", "full-sharing"])
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        procs = start(n, args.mode)
        try:
            for layout in ("one-watching", "all-watching"):
                rows.append(run_layout(n, layout, args.p, args.w, args.rate))
                r = rows[-1]
                print(f"N={n} {layout}: {r['per_publish']:.2f} msgs/PUBLISH (broadcast: {r['broadcast']}), "
                      f"remote NOTIFY p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms, missing {r['missing']}", flush=True)
        finally:
            stop(procs)
    print(f"\nmode {args.mode}, {args.p} PUBLISHes per layout at {args.rate:g}/s, {args.w} watchers")
    print(f"{'N':>3} {'layout':<13} {'msgs/PUBLISH':>12} {'broadcast':>9} {'p50 ms':>7} {'p99 ms':>7} {'missing':>7}")
    for r in rows:
        print(f"{r['n']:>3} {r['layout']:<13} {r['per_publish']:>12.2f} {r['broadcast']:>9} "
              f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['missing']:>7}")


if __name__ == "__main__":
    main()
