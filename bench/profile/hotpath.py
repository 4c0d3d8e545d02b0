"""CPU cost of the node's hot paths, in-process (no SIPp, no sockets for
the measured messages): PUBLISH, SUBSCRIBE with its NOTIFY answered, and
PUBLISH to a presentity with one watcher (publish-watched: the PUBLISH and
the NOTIFY it causes, answered).

    .venv/bin/python bench/profile/hotpath.py [publish|subscribe|publish-watched] [N] [--profile [--profile-out F]] [--dsn-file FILE]

Prints microseconds of CPU per request.  With --profile, the top functions
by own time (cProfile).  Use it to see where time goes before optimising.
With --dsn-file, the node uses that PostgreSQL database (a throw-away one:
``bench/cluster/nodes.sh start`` writes ``bench/run/cluster/dsn``) with
sharing tag ``vip`` active here, as node 1 of the cluster bench; only this
process's CPU is counted, not the database server's.  Up to WINDOW (64)
requests are outstanding at once, as under load.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import sys
import tempfile
import time

from presence_node.config import Config
from presence_node.node import Node

#: Unique user names per run: a database is reused between runs.
RUN = os.getpid()

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:p{n}@127.0.0.1">\r\n'
    '  <tuple id="t{n}">\r\n    <status><basic>open</basic></status>\r\n'
    "    <contact priority=\"0.8\">sip:p{n}@127.0.0.1:6000</contact>\r\n    <note>Online</note>\r\n"
    "  </tuple>\r\n</presence>\r\n"
)


def publish(i: int) -> bytes:
    n = f"{RUN}-{i}"
    body = PIDF.format(n=n).encode()
    head = (
        f"PUBLISH sip:p{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:p{n}@127.0.0.1>;tag=123P{n}\r\nTo: <sip:p{n}@127.0.0.1>\r\n"
        f"Call-ID: {n}-1234@127.0.0.1\r\nCSeq: 1 PUBLISH\r\nContact: <sip:p{n}@127.0.0.1:6000>\r\n"
        "Event: presence\r\nExpires: 3600\r\nUser-Agent: sipp-presence-bench\r\n"
        f"Content-Type: application/pidf+xml\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def subscribe(i: int) -> bytes:
    n = f"{RUN}-{i}"
    return (
        f"SUBSCRIBE sip:p{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-s{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:w{n}@127.0.0.1>;tag=123W{n}\r\nTo: <sip:p{n}@127.0.0.1>\r\n"
        f"Call-ID: s{n}-1234@127.0.0.1\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{n}@127.0.0.1:6000>\r\n"
        "Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\n"
        "User-Agent: sipp-presence-bench\r\nContent-Length: 0\r\n\r\n"
    ).encode()


_NOTIFY_HEADS = re.compile(rb"(?m)^(Via|From|To|Call-ID|CSeq):[^\r\n]*\r\n")


def answer(notify: bytes) -> bytes:
    """A 200 to a NOTIFY, built the way a UA does (copied headers, To tag)."""
    heads = b"".join(m.group(0) for m in _NOTIFY_HEADS.finditer(notify.split(b"\r\n\r\n", 1)[0]))
    heads = heads.replace(b"\r\nTo: ", b"\r\nTo: ", 1)
    return b"SIP/2.0 200 OK\r\n" + heads + b"Content-Length: 0\r\n\r\n"


WINDOW = 64


def config(state: str, dsn_file: str | None) -> Config:
    """The node under test: memory storage, or PostgreSQL as in bench/cluster."""
    extra: dict = {}
    if dsn_file:
        extra = {
            "node_id": "hotpath",
            "cluster_id": "bench",
            "sharing_tags": {"vip": "active"},
            "default_tag": "vip",
            "storage": {"backend": "postgres", "dsn_file": dsn_file},
        }
    return Config(sip="127.0.0.1:0", admin="127.0.0.1:0", log_level="warning", state_dir=state, **extra)


async def run(kind: str, n: int, dsn_file: str | None) -> float:
    with tempfile.TemporaryDirectory() as state:
        node = Node(config(state, dsn_file), secret="x" * 20)
        await node.start()
        sent: list[bytes] = []
        out: list[bytes] = []
        progress = asyncio.Event()

        def send(data: bytes, host: str, port: int) -> None:
            sent.append(data)
            progress.set()

        def reply(data: bytes) -> None:
            out.append(data)
            progress.set()

        async def wait() -> None:
            await progress.wait()
            progress.clear()
            pump()

        node.transports._udp_send = send  # type: ignore[method-assign]

        def pump() -> None:
            while sent:
                node.dispatcher.receive(answer(sent.pop()), "127.0.0.1", 6000, "udp", reply)

        async def drive(msgs: list[bytes]) -> None:
            out.clear()
            for i, m in enumerate(msgs):
                node.dispatcher.receive(m, "127.0.0.1", 6000, "udp", reply)
                pump()
                if i % 200 == 0:
                    await asyncio.sleep(0)
                while len(out) < i + 1 - WINDOW:
                    await wait()
            while len(out) < len(msgs) or node.transports.client:
                await wait()

        if kind == "publish-watched":  # one watcher per presentity first, not counted
            await drive([subscribe(i) for i in range(n)])
        msgs = [subscribe(i) if kind == "subscribe" else publish(i) for i in range(n)]
        t0 = time.process_time()
        await drive(msgs)
        dt = time.process_time() - t0
        await node.stop()
    return dt / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", default="publish", choices=["publish", "subscribe", "publish-watched"])
    parser.add_argument("n", nargs="?", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-out", help="also write the cProfile data here (for pstats or snakeviz)")
    parser.add_argument("--dsn-file")
    a = parser.parse_args()
    import uvloop

    uvloop.install()
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        us = asyncio.run(run(a.kind, a.n, a.dsn_file))
        prof.disable()
        if a.profile_out:
            prof.dump_stats(a.profile_out)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    else:
        us = asyncio.run(run(a.kind, a.n, a.dsn_file))
    print(f"{a.kind}: {us:.1f} us CPU per request ({a.n} requests)")


if __name__ == "__main__":
    main()
