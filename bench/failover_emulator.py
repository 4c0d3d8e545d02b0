#!/usr/bin/env python3
"""Failover time and the one-owner rule under the kopf operator, against
KMock's Kubernetes emulator.

    .venv/bin/python bench/failover_emulator.py [--kills 20] [--timeout 10]
    .venv/bin/python bench/failover.py --emulator [--kills 20]      # the same

Needs the test extra installed (``pip install -e '.[test]'``: kmock) and
PostgreSQL's server binaries (``scripts/setup.sh``); no root, no cluster.

Starts the emulator (``tests/kube_emulator.py``, the tests' one) on a
free port with the project's CRD, a private PostgreSQL (local mode's
``pg.start``), and the operator as a process (``presence-operator
--standalone --namespace=presence-bench``, as the chart's Deployment runs
it, with ``PRESENCE_OPERATOR_ADMIN_PORT`` pointing it at the nodes).  It
creates the database Secret and the HA example, then plays the kubelet: it
runs two ``presence-node`` processes from the operator's ConfigMap on
127.0.0.2 and 127.0.0.3 and creates their pods with IP and readiness.

Then ``--kills`` times: SIGKILL the node that owns ``vip``, time until the
survivor's own ``GET /tags`` reports ``vip`` active above the old epoch,
start the victim again with the same configuration and wait until the CR's
status is Ready with both nodes and no intent.  The pod's readiness in the
API is left True throughout: there is no kubelet, so the operator detects the
death by its own probes of the nodes' admin API alone (what a real kubelet
would add is a readiness change some seconds later).  The same monitor as
``bench/failover.py`` asks both nodes for ``vip`` every 50 ms and counts
two-owner moments.

Prints one line per kill, then min/median/max (and the operator's own
``status.lastFailover.seconds``, measured from the first failed probe);
writes ``bench/results/<time>-failover-emulator.json``.  Exit status 1 on a
two-owner moment or a failover over ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The tests' Kubernetes emulator (tests/kube_emulator.py): test support, not
# part of the installed operator.
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))

from failover import TAG, Monitor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NS = "presence-bench"
CR = "presence.example.org/v1alpha1/presenceclusters"
HOSTS = ["127.0.0.2", "127.0.0.3"]


async def until(check: Callable[[], Any], timeout: float, what: str, period: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = check()
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            v = None
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(period)


class Node:
    """One presence-node process standing in for a pod's container."""

    def __init__(self, name: str, cfg: Path, work: Path) -> None:
        self.name, self.cfg, self.work = name, cfg, work
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_ADMIN_SECRET", "PRESENCE_DB_DSN")}
        with (self.work / "stderr.log").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                str(BIN / "presence-node"), "--config", str(self.cfg), stdout=asyncio.subprocess.DEVNULL,
                stderr=err, env=env, cwd=self.work)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def run(args: argparse.Namespace) -> int:
    import kmock

    from kube_emulator import ApiEmulator
    from presence_operator.builders import meta
    from presence_operator.local import pg

    tmp = Path(tempfile.mkdtemp(prefix="failover-emulator-bench-"))
    print(f"work directory {tmp}", flush=True)
    results: list[dict[str, Any]] = []
    failed = 0
    mon: Monitor | None = None
    db: dict[str, Any] | None = None
    nodes: dict[str, Node] = {}
    op: asyncio.subprocess.Process | None = None
    async with ApiEmulator() as k, kmock.Server(k):
        k.prepare(NS, yaml.safe_load((ROOT / "crds" / "presenceclusters.yaml").read_text()))
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "b",
            "clusters": [{"name": "b", "cluster": {"server": str(k.url).rstrip("/")}}],
            "users": [{"name": "b", "user": {"token": "b"}}],
            "contexts": [{"name": "b", "context": {"cluster": "b", "user": "b", "namespace": NS}}]}))
        admin_port = pg.free_port(HOSTS)
        live_port = pg.free_port()
        try:
            print("starting PostgreSQL ...", flush=True)
            db = await asyncio.to_thread(pg.start, tmp, "bench")
            env = {k_: v for k_, v in os.environ.items() if not k_.startswith("PRESENCE_")}
            env.update(KUBECONFIG=str(kubeconfig), HOME=str(tmp), PRESENCE_OPERATOR_ADMIN_PORT=str(admin_port))
            oplog = (tmp / "operator.log").open("wb")
            op = await asyncio.create_subprocess_exec(
                str(BIN / "presence-operator"), "--standalone", f"--namespace={NS}",
                f"--liveness=http://127.0.0.1:{live_port}/healthz", env=env, cwd=tmp, stdout=oplog, stderr=oplog)

            dsn = str(db["dsn"])
            await k.post(f"/api/v1/namespaces/{NS}/secrets", json={
                "metadata": {"name": "demo-ha-db", "namespace": NS},
                "data": {"dsn": base64.b64encode(dsn.encode()).decode()}})
            ha = yaml.safe_load((ROOT / "examples" / "01-ha" / "cluster.yaml").read_text())
            ha["metadata"]["namespace"] = NS
            await k.post(f"/apis/presence.example.org/v1alpha1/namespaces/{NS}/presenceclusters", json=ha)
            cm = await until(lambda: k.live("v1/configmaps", NS, "demo-ha-l1-config"), 30, "the operator's ConfigMap")
            sec = await until(lambda: k.live("v1/secrets", NS, "demo-ha-secrets"), 10, "the generated Secret")
            secret = base64.b64decode(sec["data"]["admin"]).decode()
            (tmp / "admin").write_text(secret)
            (tmp / "dsn").write_text(dsn)

            # The kubelet's part: containers from the ConfigMap, pods with IP and readiness.
            for i, host in enumerate(HOSTS):
                cfg = yaml.safe_load(cm["data"][f"node-{i}.yaml"])
                name = cfg["node_id"]
                work = tmp / name
                work.mkdir()
                cfg.update(sip=f"{host}:0", admin=f"{host}:{admin_port}", admin_secret_file=str(tmp / "admin"),
                           state_dir=str(work / "state"), log_level="warning",
                           storage={**cfg["storage"], "dsn_file": str(tmp / "dsn")})
                (work / "node.yaml").write_text(yaml.safe_dump(cfg))
                nodes[name] = Node(name, work / "node.yaml", work)
                await nodes[name].start()
                pod = f"demo-ha-l1-{i}"
                await k.post(f"/api/v1/namespaces/{NS}/pods", json={
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NS, "labels": {
                        meta.CLUSTER_LABEL: "demo-ha", meta.LOCATION_LABEL: "l1"}},
                    "spec": {"containers": [{"name": "node", "image": "presence-node:latest"}]}})
                await k.patch(f"/api/v1/namespaces/{NS}/pods/{pod}/status", json={"status": {
                    "podIP": host, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})

            def status() -> dict[str, Any]:
                return (k.live(CR, NS, "demo-ha") or {}).get("status") or {}

            def settled() -> bool:
                s = status()
                return s.get("phase") == "Ready" and s.get("readyNodes") == 2 and not s.get("intent")

            await until(lambda: settled() and status()["tags"][TAG]["owner"], 60, "the cluster Ready")
            names = list(nodes)
            addr = {n: f"{HOSTS[i]}:{admin_port}" for i, n in enumerate(names)}
            mon = Monitor(addr, secret)
            mon.start()
            print(f"cluster Ready under the operator (nodes {', '.join(names)}); {args.kills} kills", flush=True)
            for i in range(args.kills):
                victim = await until(lambda: next(n for n in names if (mon.view(n)[2] or {}).get("state") == "active"),
                                     5, f"an owner of {TAG}")
                before = mon.view(victim)[2]["epoch"]
                count = status().get("failoverCount", 0)
                survivor = next(n for n in names if n != victim)
                killed = time.monotonic()
                await nodes[victim].kill()
                try:
                    _, seen, tag = await until(
                        lambda: (v := mon.view(survivor))[0] > killed and v[2] and v[2]["state"] == "active"
                        and v[2]["epoch"] > before and v, args.timeout, f"{TAG} active on {survivor}")
                    took = seen - killed
                    st = await until(lambda: (s := status()).get("failoverCount", 0) > count and s, 5,
                                     "the failover in status")
                    own = (st.get("lastFailover") or {}).get("seconds")
                    print(f"kill {i + 1:2d}: {victim} -> {survivor} in {took:.3f} s (epoch {before} -> {tag['epoch']};"
                          f" operator's own figure {own} s)", flush=True)
                    results.append({"kill": i + 1, "from": victim, "to": survivor, "seconds": round(took, 4),
                                    "operator_seconds": own, "epoch_before": before, "epoch_after": tag["epoch"]})
                except TimeoutError as e:
                    failed += 1
                    print(f"kill {i + 1:2d}: {victim}: {e}", flush=True)
                    results.append({"kill": i + 1, "from": victim, "to": None, "seconds": None})
                await nodes[victim].start()
                await until(settled, 20, "Ready again")
                await asyncio.sleep(0.5)
        finally:
            if mon is not None:
                mon.stop.set()
                await asyncio.to_thread(mon.join, 5)
            for n in nodes.values():
                await n.kill()
            if op is not None and op.returncode is None:
                op.terminate()
                try:
                    await asyncio.wait_for(op.wait(), 15)
                except asyncio.TimeoutError:
                    op.kill()
                    await op.wait()
            if db is not None:
                await asyncio.to_thread(pg.stop, db)

    times = [r["seconds"] for r in results if r["seconds"] is not None]
    own = [r["operator_seconds"] for r in results if r.get("operator_seconds") is not None]
    summary = {
        "kills": len(results), "failed": failed,
        "min_s": min(times, default=None), "median_s": statistics.median(times) if times else None,
        "max_s": max(times, default=None),
        "operator_median_s": round(statistics.median(own), 3) if own else None, "operator_max_s": max(own, default=None),
        "monitor_rounds": mon.rounds if mon else 0, "two_owner_moments": len(mon.two_owners) if mon else None,
        "straddles": mon.straddles if mon else 0, "two_owner_samples": (mon.two_owners if mon else [])[:5],
        "example": "examples/01-ha/cluster.yaml", "driver": "kopf operator process against KMock's emulator",
        "monitor_period_s": 0.05,
    }
    if times:
        print(f"\nfailover over {len(times)} kills (operator on the emulator): min {summary['min_s']:.3f} s, "
              f"median {summary['median_s']:.3f} s, max {summary['max_s']:.3f} s; failed {failed}; "
              f"operator's own figure median {summary['operator_median_s']} s, max {summary['operator_max_s']} s; "
              f"two-owner moments {summary['two_owner_moments']} in {summary['monitor_rounds']} monitor rounds "
              f"({summary['straddles']} rounds straddled a move)")
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-failover-emulator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "kills": results}, indent=1))
    print(f"written {out}")
    if not failed and not summary["two_owner_moments"]:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed or summary["two_owner_moments"] or not times else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a failover counts as failed")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
