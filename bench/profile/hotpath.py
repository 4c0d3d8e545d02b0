"""CPU cost of the node's hot paths, in-process (no SIPp, no sockets for
the measured messages): PUBLISH, and SUBSCRIBE with its NOTIFY answered.

    .venv/bin/python bench/profile/hotpath.py [publish|subscribe] [N] [--profile]

Prints microseconds of CPU per request.  With --profile, the top functions
by own time (cProfile).  Use it to see where time goes before optimising.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import re
import sys
import tempfile
import time

from presence_node.config import Config
from presence_node.node import Node

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:p{n}@127.0.0.1">\r\n'
    '  <tuple id="t{n}">\r\n    <status><basic>open</basic></status>\r\n'
    "    <contact priority=\"0.8\">sip:p{n}@127.0.0.1:6000</contact>\r\n    <note>Online</note>\r\n"
    "  </tuple>\r\n</presence>\r\n"
)


def publish(n: int) -> bytes:
    body = PIDF.format(n=n).encode()
    head = (
        f"PUBLISH sip:p{n}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:p{n}@127.0.0.1>;tag=123P{n}\r\nTo: <sip:p{n}@127.0.0.1>\r\n"
        f"Call-ID: {n}-1234@127.0.0.1\r\nCSeq: 1 PUBLISH\r\nContact: <sip:p{n}@127.0.0.1:6000>\r\n"
        "Event: presence\r\nExpires: 3600\r\nUser-Agent: sipp-presence-bench\r\n"
        f"Content-Type: application/pidf+xml\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def subscribe(n: int) -> bytes:
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


async def run(kind: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as state:
        node = Node(Config(sip="127.0.0.1:0", admin="127.0.0.1:0", log_level="warning", state_dir=state), secret="x" * 20)
        await node.start()
        sent: list[bytes] = []
        node.transports._udp_send = lambda data, host, port: sent.append(data)  # type: ignore[method-assign]
        msgs = [publish(i) if kind == "publish" else subscribe(i) for i in range(n)]
        out: list[bytes] = []
        t0 = time.process_time()
        for i, m in enumerate(msgs):
            node.dispatcher.receive(m, "127.0.0.1", 6000, "udp", out.append)
            while sent:
                node.dispatcher.receive(answer(sent.pop()), "127.0.0.1", 6000, "udp", out.append)
            if i % 200 == 0:
                await asyncio.sleep(0)
        while len(out) < n:
            await asyncio.sleep(0)
        dt = time.process_time() - t0
        assert len(node.transports.client) == 0, "every NOTIFY answered"
        await node.stop()
    return dt / n * 1e6


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "publish"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    import uvloop

    uvloop.install()
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        us = asyncio.run(run(kind, n))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    else:
        us = asyncio.run(run(kind, n))
    print(f"{kind}: {us:.1f} us CPU per request ({n} requests)")


if __name__ == "__main__":
    main()
