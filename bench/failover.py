#!/usr/bin/env python3
"""Failover time and the one-owner rule, in local mode.

    .venv/bin/python bench/failover.py [--kills 20] [--example examples/01-ha/cluster.yaml] [--runtime podman]

Brings the HA example up with ``presence-cluster up`` in a temporary state
directory on free ports, then ``--kills`` times: SIGKILL the node that owns
``vip``, measure the time until the survivor's own ``GET /tags`` reports
``vip`` active (above the old epoch), ``presence-cluster restart`` the killed
node and wait until the cluster is Ready again.  All along, a monitor asks
both nodes for their view of ``vip`` every 50 ms (both at once, in two
threads) and counts the moments with two owners: both answers ``active`` at
the same epoch, or a node claiming a lower epoch although it was asked only
after the other node's higher claim had been answered.  Two answers of one
round that straddle a move (the old owner read just before it, the new one
just after: lower epoch asked first) are counted apart, as ``straddles``;
they are not two owners.  ``--runtime podman``: the nodes are the
containers of the rendered pods (``presence-cluster images`` first); the
SIGKILL goes to the container's process, as an OOM kill would.

Prints one line per kill, then min/median/max; writes everything to
``bench/results/<time>-failover.json``.  Exit status 1 if any moment had two
owners or a failover timed out.  Stops everything it started (``down``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from presence_operator.local.pg import free_base

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "presence-cluster")
TAG = "vip"


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = pred()
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            v = None
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class Monitor(threading.Thread):
    """Both nodes' /tags every 50 ms; keeps the latest answer per node."""

    def __init__(self, admins: dict[str, str], secret: str, period: float = 0.05) -> None:
        super().__init__(daemon=True, name="monitor")
        self.admins, self.secret, self.period = admins, secret, period
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latest: dict[str, tuple[float, float, dict | None]] = {}
        self.rounds = 0
        self.two_owners: list[str] = []
        self.straddles = 0
        self.pool = ThreadPoolExecutor(len(admins))

    def ask(self, node: str) -> tuple[float, float, dict | None]:
        sent = time.monotonic()
        req = urllib.request.Request(f"http://{self.admins[node]}/tags",
                                     headers={"Authorization": f"Bearer {self.secret}"})
        try:
            with urllib.request.urlopen(req, timeout=0.5) as r:
                tag = next(t for t in json.load(r)["items"] if t["tag"] == TAG)
        except (OSError, ValueError, StopIteration):
            tag = None
        return sent, time.monotonic(), tag

    def run(self) -> None:
        names = list(self.admins)
        while not self.stop.is_set():
            started = time.monotonic()
            answers = dict(zip(names, self.pool.map(self.ask, names)))
            with self.lock:
                self.latest.update(answers)
                self.rounds += 1
            active = [(n, a) for n, a in answers.items() if a[2] and a[2]["state"] == "active"]
            if len(active) > 1:
                (ln, (ls, _, lo)), (hn, (_, hr, hi)) = sorted(active, key=lambda x: x[1][2]["epoch"])[:2]
                if lo["epoch"] == hi["epoch"] or ls > hr:
                    self.two_owners.append(f"{ln}={lo} {hn}={hi}")
                else:
                    self.straddles += 1
            self.stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def view(self, node: str) -> tuple[float, float, dict | None]:
        with self.lock:
            return self.latest.get(node, (0.0, 0.0, None))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--example", type=Path, default=ROOT / "examples" / "01-ha" / "cluster.yaml")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a failover counts as failed")
    ap.add_argument("--runtime", choices=["process", "podman"], default="process")
    ap.add_argument("--emulator", action="store_true",
                    help="under the kopf operator against KMock's emulator instead (bench/failover_emulator.py)")
    args = ap.parse_args()
    if args.emulator:
        import failover_emulator

        return failover_emulator.main(["--kills", str(args.kills), "--timeout", str(args.timeout)])

    tmp = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    d = tmp / "state"
    sip, admin = free_base(2), free_base(2)
    log = (tmp / "up.log").open("w")
    up = subprocess.Popen([EXE, "up", str(args.example), "--dir", str(d), "--sip-base", str(sip),
                           "--admin-base", str(admin), "--runtime", args.runtime], stdout=log,
                          stderr=subprocess.STDOUT, cwd=tmp)
    status = lambda: json.loads((d / "status.json").read_text())  # noqa: E731
    results: list[dict] = []
    failed = 0
    mon: Monitor | None = None
    try:
        wait_for(lambda: status()["phase"] == "Ready" and status()["tags"][TAG]["owner"], 90, "cluster Ready")
        run = json.loads((d / "run.json").read_text())
        secret = (d / "admin-secret").read_text().strip()
        nodes = list(run["nodes"])
        mon = Monitor({n: run["nodes"][n]["admin"] for n in nodes}, secret)
        mon.start()
        print(f"cluster up in {d} (nodes {', '.join(nodes)}; log {tmp / 'up.log'}); {args.kills} kills", flush=True)
        for i in range(args.kills):
            run = json.loads((d / "run.json").read_text())
            victim = wait_for(lambda: next(n for n in nodes if (mon.view(n)[2] or {}).get("state") == "active"),
                              5, f"an owner of {TAG}")
            before = mon.view(victim)[2]["epoch"]
            survivor = next(n for n in nodes if n != victim)
            killed = time.monotonic()
            os.kill(run["nodes"][victim]["pid"], signal.SIGKILL)
            try:
                _, seen, tag = wait_for(lambda: (v := mon.view(survivor))[0] > killed and v[2]
                                        and v[2]["state"] == "active" and v[2]["epoch"] > before and v,
                                        args.timeout, f"{TAG} active on {survivor}")
                took = seen - killed
                print(f"kill {i + 1:2d}: {victim} -> {survivor} in {took:.3f} s (epoch {before} -> {tag['epoch']})",
                      flush=True)
                results.append({"kill": i + 1, "from": victim, "to": survivor, "seconds": round(took, 4),
                                "epoch_before": before, "epoch_after": tag["epoch"]})
            except TimeoutError as e:
                failed += 1
                print(f"kill {i + 1:2d}: {victim}: {e}", flush=True)
                results.append({"kill": i + 1, "from": victim, "to": None, "seconds": None})
            res = subprocess.run([EXE, "restart", victim, "--dir", str(d)], capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                raise RuntimeError(f"restart {victim} failed: {res.stderr}")
            wait_for(lambda: (s := status())["phase"] == "Ready" and s["readyNodes"] == len(nodes)
                     and not s.get("intent"), 15, "Ready again")
            time.sleep(0.5)
    finally:
        if mon is not None:
            mon.stop.set()
            mon.join(5)
        subprocess.run([EXE, "down", "--dir", str(d)], capture_output=True, timeout=60)
        up.wait(timeout=15)
        log.close()

    times = [r["seconds"] for r in results if r["seconds"] is not None]
    summary = {
        "kills": len(results), "failed": failed,
        "min_s": min(times, default=None), "median_s": statistics.median(times) if times else None,
        "max_s": max(times, default=None),
        "monitor_rounds": mon.rounds if mon else 0, "two_owner_moments": len(mon.two_owners) if mon else None,
        "straddles": mon.straddles if mon else 0, "two_owner_samples": (mon.two_owners if mon else [])[:5],
        "example": str(args.example), "probe_period_s": 0.2, "monitor_period_s": 0.05,
    }
    print(f"\nfailover over {len(times)} kills: min {summary['min_s']:.3f} s, median {summary['median_s']:.3f} s, "
          f"max {summary['max_s']:.3f} s; failed {failed}; two-owner moments {summary['two_owner_moments']} "
          f"in {summary['monitor_rounds']} monitor rounds ({summary['straddles']} rounds straddled a move)")
    out = ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-failover.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "kills": results}, indent=1))
    print(f"written {out}")
    return 1 if failed or summary["two_owner_moments"] else 0


if __name__ == "__main__":
    sys.exit(main())
