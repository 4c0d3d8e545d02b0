"""The NOTIFY sender's one loop timer (net/transport.py), under uvloop, the
event loop the node runs on: uvloop answers ``call_at`` for a deadline less
than 0.5 ms away with a plain ``Handle`` (no ``when()``), which happens
under load when retransmission deadlines crowd together.  Sending more
NOTIFYs then must still work, and the retransmissions must still come."""

from __future__ import annotations

import asyncio
import dataclasses

import uvloop

from presence_node.storage import Subscription

from test_pg_presentity_lock import sub
from wire import bare_transports, datagrams, silent_udp


def watcher(port: int, i: int) -> Subscription:
    """A subscription whose NOTIFYs go to 127.0.0.1:``port``."""
    return dataclasses.replace(sub(i), contact=f"sip:w@127.0.0.1:{port}", source=f"127.0.0.1:{port}")


async def scenario() -> tuple[int, list[int]]:
    sink = silent_udp()
    port = sink.getsockname()[1]
    # T1 below uvloop's 0.5 ms rounding: every arm gets a plain Handle.
    t = await bare_transports(t1=0.0004, t2=0.002)
    codes: list[int] = []
    try:
        for i in range(3):
            t.send_request(b"NOTIFY sip:w@127.0.0.1 SIP/2.0\r\n\r\n", watcher(port, i), f"z9hG4bK-{i}", codes.append)
        await asyncio.sleep(0.3)  # past Timer F (64 * T1): each transaction times out
        received = datagrams(sink)
        return received, codes
    finally:
        await t.close()
        sink.close()


def test_notify_timer_survives_uvloop_handles_for_near_deadlines():
    loop = uvloop.new_event_loop()
    try:
        received, codes = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert codes == [408, 408, 408]  # Timer F fired for each
    assert received > 3  # the first transmissions and retransmissions (Timer E)
