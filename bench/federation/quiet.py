#!/usr/bin/env python3
"""Wait until the machine is quiet enough for a measured run.

    quiet.py [--load 0.8] [--poll 10] [--max-wait 2400] [--root PID]

Quiet = no `sipp`, `kamailio` or `presence-node` process runs that is not
ours, and the 1-minute load average is below --load.  Ours = the pids in
the federation benchmark's pid files (bench/run/node-5301.pid,
node-5302.pid, bench/run/fed-kam/node*/kamailio.pid) and every descendant
of them and of --root (default: the parent of this process, i.e. the
benchmark script).  Polls every --poll s; gives up after --max-wait s
(default 40 minutes) with exit status 3.  Prints one line, e.g.

    quiet: load 0.42 0.61 0.77 after 30 s wait

(also as JSON with --json).  As a module: wait_quiet() returns a dict with
the load averages, the seconds waited and whether it gave up.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
PID_FILES = [os.path.join(BENCH, "run", "node-5301.pid"), os.path.join(BENCH, "run", "node-5302.pid")] + \
    [os.path.join(BENCH, "run", "fed-kam", "node%d" % i, "kamailio.pid") for i in (1, 2)]
NAMES = ("sipp", "kamailio", "presence-node")


def _procs() -> dict[int, tuple[int, str, list[str]]]:
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        pid = int(d[6:])
        try:
            with open(d + "/stat") as f:
                st = f.read()
            comm = st[st.index("(") + 1:st.rindex(")")]
            ppid = int(st[st.rindex(")") + 2:].split()[1])
            with open(d + "/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except (OSError, ValueError):
            continue
        out[pid] = (ppid, comm, argv)
    return out


def _kind(comm: str, argv: list[str]) -> str | None:
    names = {comm} | {os.path.basename(a) for a in argv[:3]}
    for n in NAMES:
        if n in names:
            return n
    return None


def foreign(root: int | None = None) -> list[str]:
    """The sipp / kamailio / presence-node processes that are not ours."""
    procs = _procs()
    seeds = set()
    for f in PID_FILES:
        try:
            seeds.add(int(open(f).read().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    if root:
        seeds.add(root)
    ours = set(seeds)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    res = []
    for pid, (_, comm, argv) in procs.items():
        k = _kind(comm, argv)
        if k and pid not in ours:
            res.append("%d %s" % (pid, " ".join(argv)[:100]))
    return res


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def wait_quiet(max_load: float = 0.8, poll: float = 10.0, max_wait: float = 2400.0,
               root: int | None = None, log=None) -> dict:
    t0 = time.monotonic()
    last = ""
    while True:
        others = foreign(root)
        la = loadavg()
        waited = time.monotonic() - t0
        if not others and la[0] < max_load:
            return {"load": la, "waited_s": round(waited), "gave_up": False, "others": []}
        if waited >= max_wait:
            return {"load": la, "waited_s": round(waited), "gave_up": True, "others": others}
        msg = "quiet: waiting (load %.2f%s)" % (la[0], ", others: " + "; ".join(others[:3]) if others else "")
        if log and msg != last:
            log(msg)
            last = msg
        time.sleep(poll)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--poll", type=float, default=10.0)
    ap.add_argument("--max-wait", type=float, default=2400.0)
    ap.add_argument("--root", type=int, default=os.getppid())
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = wait_quiet(a.load, a.poll, a.max_wait, a.root, log=lambda m: print(m, file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps(r))
    else:
        print("quiet: load %s after %d s wait%s" % (" ".join("%.2f" % x for x in r["load"]), r["waited_s"],
                                                    " -- GAVE UP, machine busy: " + "; ".join(r["others"][:3])
                                                    if r["gave_up"] else ""))
    sys.exit(3 if r["gave_up"] else 0)


if __name__ == "__main__":
    main()
