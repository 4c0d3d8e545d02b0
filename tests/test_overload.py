"""Overload control (#12.4): when saturated, shed early and cheaply.

The nodes run in the test's own event loop, so while the test blocks that
loop (``time.sleep``) the datagrams it sends wait in the node's kernel
receive buffer exactly as they do behind a node that cannot keep up: a
real backlog of old requests, over real sockets, without a real flood.
"""

from __future__ import annotations

import asyncio
import socket
import time

import psycopg
from bodies import PIDF_TYPE, pidf
from sipclient import SipClient

from presence_node.service.overload import OverloadControl
from presence_node.storage.postgres import PostgresStorage


# -- the control law, with injected delays and times (target 20 ms, interval 100 ms)


def _feed(ctl: OverloadControl, start: float, end: float, delay: float, step: float = 0.001) -> list[bool]:
    """One request every ``step`` from ``start`` until ``end``, each delayed ``delay``."""
    n = round((end - start) / step)
    return [ctl.admit(delay, start + i * step) for i in range(n)]


def test_standing_queue_is_shed_one_interval_after_it_formed() -> None:
    ctl = OverloadControl(0.02, 0.1)
    assert all(_feed(ctl, 0.0, 0.05, 0.005))
    # From 50 ms on every request waits beyond the target: a standing queue.
    assert all(_feed(ctl, 0.05, 0.149, 0.03)), "within an interval it may still be a burst"
    assert not ctl.admit(0.03, 0.151), "an interval later it is shed, not at the next window's end"
    assert ctl.shedding
    assert ctl.admit(0.01, 0.152), "while shedding, a request within the target is served"
    assert not ctl.admit(0.025, 0.153)


def test_backlog_older_than_an_interval_is_shed_without_waiting_one() -> None:
    """After a 200 ms stall the backlog read in arrival order proves that
    the queue stood above the target for longer than an interval."""
    ctl = OverloadControl(0.02, 0.1)
    assert ctl.admit(0.2, 1.0), "one late request alone may be a stall of this request only"
    assert not ctl.admit(0.199, 1.001)
    assert all(_feed(ctl, 1.002, 1.1, 0.01))


def test_lone_late_requests_between_timely_ones_are_served() -> None:
    ctl = OverloadControl(0.02, 0.1)
    for k in range(10):
        assert ctl.admit(0.5, k * 0.2)
        assert ctl.admit(0.001, k * 0.2 + 0.01)
    assert not ctl.shedding


def test_burst_shorter_than_an_interval_is_served() -> None:
    ctl = OverloadControl(0.02, 0.1)
    for k in range(5):  # every 100 ms a burst that takes 90 ms to read, then one request within the target
        t0 = k * 0.1
        for i in range(90):
            now = t0 + i * 0.001
            assert ctl.admit(now - t0, now), "all of the burst arrived at t0"
        assert ctl.admit(0.001, t0 + 0.095)
    assert not ctl.shedding


def test_shedding_ends_after_an_interval_without_a_delay_above_the_target() -> None:
    ctl = OverloadControl(0.02, 0.1)
    _feed(ctl, 0.0, 0.2, 0.05)
    assert ctl.shedding
    assert all(_feed(ctl, 0.2, 0.299, 0.01))
    assert ctl.shedding, "not yet an interval without a delay above the target"
    assert ctl.admit(0.01, 0.3) and not ctl.shedding
    # A new queue is again given an interval before shedding resumes.
    assert ctl.admit(0.05, 0.31) and ctl.admit(0.05, 0.4)
    assert not ctl.admit(0.05, 0.42)


def _publish(c: SipClient, user: str) -> bytes:
    uri = f"sip:{user}@example.com"
    hs = [("Event", "presence"), ("Expires", "3600"), ("Content-Type", PIDF_TYPE)]
    return c.build("PUBLISH", uri, hs, pidf(uri))


async def _client(node, open_clients) -> SipClient:  # type: ignore[no-untyped-def]
    c = await SipClient(("127.0.0.1", node.sip_port), "udp", "alice").open()
    open_clients.append(c)
    # Room for every answer to a whole backlog, read only when the loop runs.
    c._udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    return c


async def _drain(c: SipClient, quiet: float = 0.5) -> list:  # type: ignore[type-arg]
    """Every response that arrives until none has for ``quiet`` seconds."""
    got = []
    while True:
        try:
            got.append(await c.response(quiet))
        except asyncio.TimeoutError:
            return got


async def test_backlog_older_than_target_gets_503_and_work_resumes(make_node, open_clients) -> None:
    node = await make_node(limits={"overload_target": 0.01, "overload_interval": 0.001})
    c = await _client(node, open_clients)
    n = 200
    for i in range(n):
        data = _publish(c, f"p{i}")
        c.send_bytes(data)
        c.send_bytes(data)  # its retransmission, queued right behind it
    time.sleep(0.3)  # the node's loop is blocked: all of it waits 300 ms in its socket buffer

    answers = await _drain(c)
    by_call: dict[str, set[int]] = {}
    for r in answers:
        by_call.setdefault(r.headers.get("call-id") or "", set()).add(r.code)
    assert len(by_call) == n, "every request (not its retransmission) gets an answer"
    assert all(len(codes) == 1 for codes in by_call.values()), "a retransmission never gets another outcome"
    shed = [r for r in answers if r.code == 503]
    served = {cid for cid, codes in by_call.items() if codes == {200}}
    # Beyond the first interval everything in the backlog was older than the target.
    assert len(shed) >= n, f"most of the backlog is shed: {len(shed)} 503s for {n} requests and as many retransmissions"
    assert all(r.headers.get("retry-after") for r in shed)
    assert len(served) + len({r.headers.get("call-id") for r in shed}) == n
    # A shed request changed nothing; a served one was stored.
    _, presentities = await node.storage.counts()
    assert presentities == len(served)
    assert 'sip_dropped_total{reason="overload-queue"}' in node.metrics.render().decode()

    # Work resumes as soon as requests no longer wait.
    await asyncio.sleep(0.05)
    for i in range(5):
        assert (await c.request(_publish(c, f"after{i}"))).code == 200


async def test_backlog_of_a_stall_is_shed_without_serving_an_interval_of_it_late(make_node, open_clients) -> None:
    """Default settings (target 20 ms, interval 100 ms): after a 300 ms
    stall the requests read in arrival order show a queue that stood above
    the target for longer than an interval, so the backlog is shed at once
    rather than served 300 ms late while an interval is observed."""
    node = await make_node()
    c = await _client(node, open_clients)
    n = 30
    for i in range(n):
        c.send_bytes(_publish(c, f"s{i}"))
    time.sleep(0.3)

    answers = await _drain(c)
    assert len(answers) == n
    served = [r for r in answers if r.code == 200]
    assert len(served) <= 2, f"{len(served)} of the stalled backlog served late"
    assert {r.code for r in answers} <= {200, 503}
    assert (await node.storage.counts())[1] == len(served)


async def test_request_older_than_its_transaction_timeout_is_never_applied(make_node, open_clients) -> None:
    # Timer F = 64 * T1 = 0.64 s: the client has given up on a request that old.
    node = await make_node(notify={"t1": 0.01, "t2": 0.04}, limits={"overload_target": 0.01, "overload_interval": 0.001})
    c = await _client(node, open_clients)
    for i in range(10):
        c.send_bytes(_publish(c, f"old{i}"))
    time.sleep(0.8)

    assert await _drain(c) == [], "nobody waits for an answer any more"
    assert await node.storage.publications("sip:old0@example.com", "presence", time.time()) == []
    assert (await node.storage.counts())[1] == 0
    assert 'sip_dropped_total{reason="too-old"} 10.0' in node.metrics.render().decode()
    assert (await c.request(_publish(c, "fresh"))).code == 200


async def test_shed_503_copies_the_headers_however_they_are_written(make_node, open_clients) -> None:
    """The 503s are made from the raw header lines where they are plain and
    through the parser where not (two Via values on a line, compact names,
    a folded line): either way a well-formed answer with every Via (S01)."""
    node = await make_node(limits={"overload_target": 0.01, "overload_interval": 0.001})
    c = await _client(node, open_clients)
    proxy_via = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy1"

    def variants(i: int) -> list[bytes]:
        plain = _publish(c, f"v{i}")
        top = plain.split(b"\r\n")[1]  # the Via line
        return [
            plain,
            plain.replace(top, top + b", " + proxy_via.encode()),
            plain.replace(b"\r\nFrom: ", b"\r\nf: ").replace(b"\r\nTo: ", b"\r\nt: ").replace(b"\r\nCall-ID: ", b"\r\ni: "),
            plain.replace(b"\r\nCSeq: 1 PUBLISH", b"\r\nCSeq:\r\n 1 PUBLISH"),
        ]

    sent = [v for i in range(40) for v in variants(i)]
    for data in sent:
        c.send_bytes(data)
    time.sleep(0.3)

    answers = await _drain(c)
    assert len(answers) == len(sent)
    shed = [r for r in answers if r.code == 503]
    assert len(shed) >= len(sent) // 2
    for r in shed:
        h = r.headers
        assert h.get("retry-after") == "5" and ";tag=" in (h.get("to") or "")
        assert h.get("cseq") == "1 PUBLISH" and h.get("call-id") and h.get("from")
        assert "received=127.0.0.1" in h.values("via")[0]
    two_vias = [r for r in shed if proxy_via in ",".join(r.headers.values("via"))]
    assert two_vias, "the second Via value is kept"


async def test_database_backlog_sheds_new_requests_and_drops_retransmissions(make_node, open_clients, pg_dsn) -> None:
    """Shared-database mode: requests waiting for a stalled database are a
    standing queue; new requests get a 503 at once (the database is not
    touched), a retransmission of a waiting one gets nothing, and the
    waiting ones are served once the database is back."""
    node = await make_node(
        storage_override=PostgresStorage(pg_dsn), limits={"overload_target": 0.02, "overload_interval": 0.1}
    )
    c = await _client(node, open_clients)
    waiting = [_publish(c, f"q{i}") for i in range(40)]  # more than the next statement carries
    new = [_publish(c, f"new{i}") for i in range(10)]
    async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
        async with other.transaction():
            await other.execute("LOCK TABLE publications IN ACCESS EXCLUSIVE MODE")  # the database stalls
            for data in waiting:
                c.send_bytes(data)
            await asyncio.sleep(0.5)
            for data in new:  # a steady trickle: a standing queue, not a burst
                c.send_bytes(data)
                c.send_bytes(waiting[-1])  # a retransmission of a request still waiting
                await asyncio.sleep(0.05)
            early = await _drain(c, 0.3)
            assert {r.code for r in early} == {503}
            shed = {r.headers.get("call-id") for r in early}
            assert shed <= {_call_id(d) for d in new}, "only new requests are answered, with 503"
            assert len(shed) >= len(new) // 2
        # The lock is gone: the rest are served, once each.
        late = await _drain(c, 1.0)
    served = [r.headers.get("call-id") for r in late]
    assert sorted(served) == sorted({_call_id(d) for d in waiting + new} - shed)
    assert {r.code for r in late} == {200}
    assert (await node.storage.counts())[1] == len(served)
    await asyncio.sleep(0.15)
    assert (await c.request(_publish(c, "after"))).code == 200


def _call_id(data: bytes) -> str:
    return data.split(b"\r\nCall-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
