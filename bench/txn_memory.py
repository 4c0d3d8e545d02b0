#!/usr/bin/env python3
"""Memory the server transactions hold after a burst of large requests.

    PYTHONPATH=node .venv/bin/python bench/txn_memory.py [-n 10000] [--vias 250] [--via-size 220] [--before]

Starts a node in this process (memory storage, default limits), sends N
OPTIONS over UDP one at a time, each with ``--vias`` Via values of about
``--via-size`` bytes (250 x 220: the 55 KB of issue #12.8), and prints the
answers by status, the growth of this process's RSS and what the table
holds.  ``--before`` puts the extra Vias ahead of From/To (then no 513 can
be formed from the first 8 KB: the request is dropped unanswered).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import tempfile

from presence_node.config import Config
from presence_node.node import Node


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def main(n: int, nvias: int, vsize: int, before: bool) -> None:
    cfg = {"sip": "127.0.0.1:0", "admin": "127.0.0.1:0", "log_level": "error", "state_dir": tempfile.mkdtemp()}
    node = Node(Config.model_validate(cfg), secret="x" * 20)
    await node.start()
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    port = s.getsockname()[1]
    pad = "x" * max(0, vsize - 60)
    extra = "".join(f"Via: SIP/2.0/UDP p{i}.example.com:5060;branch=z9hG4bK{i}{pad}\r\n" for i in range(1, nvias))
    gc.collect()
    start = rss()
    codes: dict[str, int] = {}
    size = 0
    for i in range(n):
        top = f"OPTIONS sip:n@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKm{i}\r\n"
        rest = f"Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=t{i}\r\nTo: <sip:n@x>\r\nCall-ID: c{i}@x\r\nCSeq: 1 OPTIONS\r\n"
        msg = (top + (extra + rest if before else rest + extra) + "Content-Length: 0\r\n\r\n").encode()
        size = len(msg)
        s.sendto(msg, ("127.0.0.1", node.sip_port))
        try:
            code = (await asyncio.wait_for(loop.sock_recv(s, 70000), 0.5))[8:11].decode()
        except asyncio.TimeoutError:
            code = "none"
        codes[code] = codes.get(code, 0) + 1
    gc.collect()
    grown = rss() - start
    t = node.dispatcher.txns
    print(f"{n} OPTIONS of {size} bytes: answers {codes}; RSS +{grown / 2**20:.0f} MB; "
          f"table {len(t)} entries, {t.retained / 2**20:.1f} MB counted, {t.evicted} evicted")
    s.close()
    await node.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--vias", type=int, default=250)
    ap.add_argument("--via-size", type=int, default=220)
    ap.add_argument("--before", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.n, a.vias, a.via_size, a.before))
