#!/usr/bin/env python3
"""The overload control law in a simulated queue: no machine noise.

    overload_sim.py [--base FILE] [--seconds 10] [--seeds 3]

One server reads requests in arrival order (Poisson arrivals at 1.5x and
2x the held rate), serves an admitted one in SERVE s and sheds one in SHED
s (a served PUBLISH and a 503 as measured, README section 8), with and
without stalls (the process descheduled 10-120 ms about every 300 ms, as on
a shared 2-core machine), and feeds each request's delay to the node's
OverloadControl (service/overload.py) and, with --base, to another file's
(e.g. an older commit's: git show OLD:node/presence_node/service/overload.py
> /tmp/old.py).  Prints goodput as % of the held rate (taken as 80 % of the
capacity), p99 of the served requests (read delay + service) and the share
shed.  The server never idles while saturated, so which requests are shed
changes the p99 and not the goodput: that is what this separates from the
machine's noise in bench/overload.sh.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
from collections.abc import Callable
from typing import Any

from presence_node.config import Limits
from presence_node.service.overload import OverloadControl

SERVE = 144e-6
SHED = 24e-6
HELD = 0.8 / SERVE


def load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("base_overload", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OverloadControl


def run(control: Callable[[float, float], Any], factor: float, stalls: bool, seed: int, seconds: float) -> tuple[float, float, float]:
    rnd = random.Random(seed)
    arrivals, a = [], 0.0
    while a < seconds:
        a += rnd.expovariate(factor * HELD)
        arrivals.append(a)
    pauses, s = [], 0.0
    while stalls and s < seconds:
        s += rnd.expovariate(1 / 0.3)
        pauses.append((s, rnd.uniform(0.01, 0.12)))
    limits = Limits()
    ctl = control(limits.overload_target, limits.overload_interval)
    t, served, shed, p = 0.0, [], 0, 0
    for a in arrivals:
        t = max(t, a)
        while p < len(pauses) and pauses[p][0] <= t:
            t = max(t, sum(pauses[p]))
            p += 1
        if ctl.admit(t - a, t):
            t += SERVE
            served.append(t - a)
        else:
            t += SHED
            shed += 1
    served.sort()
    p99 = served[int(len(served) * 0.99)] if served else 0.0
    return len(served) / seconds / HELD, p99, shed / len(arrivals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="another overload.py to compare")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    laws = [("node", OverloadControl)] + ([("base", load(args.base))] if args.base else [])
    print("stalls  offered  law   goodput % of held  p99 ms  shed %")
    for stalls in (False, True):
        for factor in (1.5, 2.0):
            for name, law in laws:
                rs = [run(law, factor, stalls, seed, args.seconds) for seed in range(args.seeds)]
                g, p99, shed = (sum(r[i] for r in rs) / len(rs) for i in range(3))
                print(f"{'yes' if stalls else 'no':6}  {factor:.1f}x     {name:4}  {100 * g:17.1f}  {1000 * p99:6.1f}  {100 * shed:6.1f}")


if __name__ == "__main__":
    main()
