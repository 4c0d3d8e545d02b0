"""Hostile network (issue #12, items 3, 5, 10 and 12), over real sockets.

Contacts the node cannot reach, TCP peers that never read, Contacts that
point at a third party's UDP port (reflection), and TCP peers that hold
connection slots (many connections from one address, slowloris).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket

import pytest
import uvloop

from presence_node.sip.parser import parse
from presence_node.storage import Subscription

from bodies import eventually, pidf
from sipclient import SipClient
from wire import bare_transports, datagrams, silent_udp
from test_pg_presentity_lock import sub


async def metric(node, name: str, **labels: str) -> float:
    """The value of one sample of the node's /metrics text (0 when absent)."""
    text = (await node.metrics_text()).decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def subscribe_with_contact(c: SipClient, contact: str, *, expires: int = 3600) -> bytes:
    hs = [("Event", "presence"), ("Expires", str(expires)), ("Contact", f"<{contact}>")]
    return c.build("SUBSCRIBE", "sip:bob@example.com", hs, with_contact=False)


# -- item 3: a Contact of an address family the node does not listen on ------


async def test_ipv6_contact_on_an_ipv4_node_is_refused_with_a_reason(node, make_client):
    c = await make_client()
    resp = await c.request(subscribe_with_contact(c, "sip:x@[::1]:5060"))
    assert resp.code == 400
    assert "Contact" in resp.reason
    assert await node.storage.counts() == (0, 0)  # nothing stored


async def test_ipv4_mapped_contact_is_reached_over_ipv4(node, make_client):
    c = await make_client()
    host, port = c.local
    resp = await c.request(subscribe_with_contact(c, f"sip:alice@[::ffff:{host}]:{port}"))
    assert resp.code == 200
    await c.wait_notifies(1)


async def test_a_refresh_to_an_ipv6_contact_is_refused_and_keeps_the_old_one(node, make_client):
    c = await make_client()
    resp, d = await c.subscribe("sip:bob@example.com")
    assert resp.code == 200
    d.cseq += 1
    data = c.build("SUBSCRIBE", d.uri, [("Event", "presence"), ("Expires", "600"), ("Contact", "<sip:x@[::1]:5060>")],
                   call_id=d.call_id, from_tag=d.from_tag, to_tag=d.to_tag, cseq=d.cseq, with_contact=False)
    resp = await c.request(data)
    assert resp.code == 400
    stored = await node.storage.subscription(d.to_tag)
    assert stored is not None and stored.contact == c.contact


def _watcher(contact: str, i: int) -> Subscription:
    return dataclasses.replace(sub(i), contact=contact, source="127.0.0.1:9")


async def _send_error_scenario() -> tuple[dict[str, int], int]:
    sink = silent_udp()
    port = sink.getsockname()[1]
    t = await bare_transports(t1=0.005, t2=0.02)
    codes: dict[str, int] = {}
    try:
        # A subscription stored by a node of another address family (a
        # shared database): its IPv6 Contact reaches this IPv4 node's sender.
        for i, contact in enumerate((f"sip:w@127.0.0.1:{port}", "sip:w@[::1]:5060", f"sip:w@127.0.0.1:{port}")):
            branch = f"z9hG4bK-{i}"
            t.send_request(b"NOTIFY sip:w SIP/2.0\r\n\r\n", _watcher(contact, i), branch,
                           lambda code, b=branch: codes.__setitem__(b, code))
        await eventually(lambda: len(codes) == 3)  # each ended: Timer F (64 * T1) for the good ones
        received = datagrams(sink)
        return codes, received
    finally:
        await t.close()
        sink.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_s26_a_send_error_fails_that_notify_with_503_and_the_timer_goes_on(loop):
    ev = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
    try:
        codes, received = ev.run_until_complete(_send_error_scenario())
    finally:
        ev.close()
    assert codes == {"z9hG4bK-0": 408, "z9hG4bK-1": 503, "z9hG4bK-2": 408}
    assert received > 2  # the good ones were retransmitted (Timer E)


# -- item 5: a TCP Contact that never reads -----------------------------------


@pytest.mark.parametrize(
    "limits,reason",
    [
        ({"tcp_max_queued": 65536, "tcp_write_timeout": 0.3}, "write-queue"),
        ({"tcp_max_queued_total": 65536}, "write-queue-total"),
    ],
)
async def test_s26_notifies_to_a_tcp_peer_that_never_reads_close_it_as_timer_f(make_node, limits, reason):
    node = await make_node(limits=limits, notify={"t1": 2.0, "t2": 4.0})
    pub = await SipClient(("127.0.0.1", node.sip_port), user="bob").open()
    try:
        # A document of ~50 KB, so each NOTIFY is large.
        resp = await pub.publish(pidf(note="x" * 50_000))
        assert resp.code == 200
    finally:
        pub.close()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(s, ("127.0.0.1", node.sip_port))
    try:
        host, port = s.getsockname()[:2]
        c = SipClient(("127.0.0.1", node.sip_port), "tcp")
        c.local = (host, port)
        polls = 200
        for _ in range(polls):
            # Polls (Expires: 0): one NOTIFY each, on this connection, never read.
            await loop.sock_sendall(s, subscribe_with_contact(c, c.contact, expires=0))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if await metric(node, "sip_tcp_closed_total", reason=reason):
                break
        assert await metric(node, "sip_tcp_closed_total", reason=reason) == 1
        assert not node.transports.connections
        # Its NOTIFYs failed as Timer F would (S26), long before Timer F (128 s).
        assert await metric(node, "sip_notify_failed_total", event="presence", code="408") >= 1
        await asyncio.sleep(0.2)
        assert node.notifier.in_flight == 0
        assert len(node.transports.client) == 0
        assert await metric(node, "sip_tcp_queued_bytes") == 0
    finally:
        s.close()


async def test_a_burst_to_a_tcp_peer_that_reads_keeps_its_connection(make_node, open_clients):
    """A proxy carrying many watchers over one connection gets a burst of
    NOTIFYs bigger than the bound at each change; it reads them, so it
    stays connected and loses nothing."""
    node = await make_node(limits={"tcp_max_queued": 65536, "tcp_write_timeout": 2.0})
    pub = await SipClient(("127.0.0.1", node.sip_port), user="bob").open()
    open_clients.append(pub)
    first = await pub.publish(pidf(note="x" * 50_000))
    assert first.code == 200
    proxy = await SipClient(("127.0.0.1", node.sip_port), "tcp").open()
    open_clients.append(proxy)
    n = 100
    for _ in range(n):
        resp, _ = await proxy.subscribe("sip:bob@example.com", expires=600)
        assert resp.code == 200
    await proxy.wait_notifies(n, timeout=5.0)
    # The proxy is busy for a moment: the burst piles up in the node.
    tcp = proxy._tcp
    assert tcp is not None
    tcp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    tcp.pause_reading()
    etag = first.headers.get("sip-etag")
    assert (await pub.publish(pidf(note="y" * 50_000), etag=etag)).code == 200  # n NOTIFYs of 50 KB at once
    await asyncio.sleep(0.5)
    assert await metric(node, "sip_tcp_queued_bytes") > 65536  # the burst did go over the bound
    tcp.resume_reading()
    await proxy.wait_notifies(2 * n, timeout=10.0)
    assert await metric(node, "sip_tcp_closed_total", reason="write-queue") == 0
    assert len(node.transports.connections) == 1


# -- item 10: reflection towards a Contact that never answered ---------------


async def test_reflection_to_a_silent_contact_is_bounded_and_resolves(make_node):
    node = await make_node(notify={"t1": 0.05, "t2": 0.2, "unproven_budget": 2000})
    victim = silent_udp("127.0.0.2")
    vhost, vport = victim.getsockname()
    attacker = await SipClient(("127.0.0.1", node.sip_port)).open()
    try:
        sent = 0
        polls = 50
        for _ in range(polls):
            data = subscribe_with_contact(attacker, f"sip:v@{vhost}:{vport}", expires=0)
            sent += len(data)
            resp = await attacker.request(data)
            assert resp.code == 200
        # Until Timer F (64 * T1 = 3.2 s) of every NOTIFY: none left to send.
        await eventually(lambda: not node.transports.client and node.notifier.in_flight == 0, timeout=10.0)
        reflected = 0
        while True:
            try:
                reflected += len(victim.recv(65535))
            except BlockingIOError:
                break
        amplification = reflected / sent
        print(f"reflection: {sent} bytes in, {reflected} bytes out, amplification {amplification:.2f}")
        assert 0 < reflected <= 2000 + 1300  # one budget (the first transmission always goes)
        assert await metric(node, "sip_notify_withheld_total", reason="unanswered") == polls - 1
        assert await metric(node, "sip_notify_withheld_total", reason="budget") >= 1
        # Every withheld NOTIFY resolved as its probe did: Timer F (408).
        assert await metric(node, "sip_notify_failed_total", event="presence", code="408") == polls
        assert node.notifier.in_flight == 0
        assert len(node.transports.client) == 0
        assert node.transports.targets.unproven == 0
    finally:
        attacker.close()
        victim.close()


async def test_the_table_of_unanswered_addresses_is_bounded(make_node):
    node = await make_node(notify={"t1": 0.05, "t2": 0.2, "max_unproven_targets": 2})
    victims = [silent_udp("127.0.0.2") for _ in range(3)]
    attacker = await SipClient(("127.0.0.1", node.sip_port)).open()
    try:
        for v in victims:
            vhost, vport = v.getsockname()
            await attacker.request(subscribe_with_contact(attacker, f"sip:v@{vhost}:{vport}", expires=0))
        await attacker.round_trip()
        assert node.transports.targets.unproven == 2
        assert await metric(node, "sip_notify_withheld_total", reason="targets-full") == 1
        assert await metric(node, "sip_notify_failed_total", event="presence", code="503") == 1
    finally:
        attacker.close()
        for v in victims:
            v.close()


async def test_a_busy_watcher_that_answers_gets_every_first_notify(make_node, open_clients):
    """A BLF phone subscribing to many presentities at once: the first
    NOTIFY probes its address, the others follow as soon as it answers."""
    node = await make_node(notify={"t1": 0.5, "t2": 4.0, "unproven_budget": 2000})
    c = await SipClient(("127.0.0.1", node.sip_port)).open()
    open_clients.append(c)
    n = 60
    for i in range(n):
        c.send_bytes(c.build("SUBSCRIBE", f"sip:p{i}@example.com", [("Event", "presence"), ("Expires", "600")]))
    await c.wait_notifies(n, timeout=5.0)
    assert await metric(node, "sip_notify_failed_total", event="presence", code="408") == 0


async def test_a_forged_answer_from_another_address_does_not_prove_a_target(make_node):
    node = await make_node(notify={"t1": 0.05, "t2": 0.2, "unproven_budget": 2000})
    victim = silent_udp("127.0.0.2")
    vhost, vport = victim.getsockname()
    attacker = await SipClient(("127.0.0.1", node.sip_port)).open()
    try:
        for _ in range(5):
            await attacker.request(subscribe_with_contact(attacker, f"sip:v@{vhost}:{vport}", expires=0))
        await attacker.round_trip()  # the first NOTIFY went to the victim before
        data = victim.recv(65535)  # the attacker learns (or guesses) the branch
        notify = parse(data)
        attacker.send_bytes(attacker.response_to(notify, 200))  # from 127.0.0.1, not the victim
        await attacker.round_trip()
        assert node.transports.targets.proven == 0
        assert await metric(node, "sip_notify_withheld_total", reason="unanswered") == 4
    finally:
        attacker.close()
        victim.close()


# -- item 12: TCP slots and slow messages -------------------------------------


async def _closed_soon(reader: asyncio.StreamReader, timeout: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


async def _options(c: SipClient) -> int:
    return (await c.request(c.build("OPTIONS", "sip:node@127.0.0.1"))).code


async def test_one_address_cannot_take_every_tcp_slot(make_node):
    node = await make_node(limits={"max_tcp_per_source": 5, "max_tcp_connections": 8})
    conns = [await asyncio.open_connection("127.0.0.1", node.sip_port) for _ in range(10)]
    try:
        closed = [await _closed_soon(r, 0.3) for r, _ in conns]
        assert closed == [False] * 5 + [True] * 5
        # Another address still gets a connection, and an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", node.sip_port, local_addr=("127.0.0.2", 0))
        try:
            c = SipClient(("127.0.0.1", node.sip_port), "tcp")
            c.local = writer.get_extra_info("sockname")[:2]
            writer.write(c.build("OPTIONS", "sip:node@127.0.0.1"))
            status = await asyncio.wait_for(reader.readline(), 3.0)
            assert status.startswith(b"SIP/2.0 200 ")
        finally:
            writer.close()
        assert await metric(node, "sip_tcp_closed_total", reason="per-source") == 5
    finally:
        for _, w in conns:
            w.close()


@pytest.mark.parametrize("part", ["header", "body"])
async def test_a_message_trickled_byte_by_byte_is_cut_off(make_node, part):
    node = await make_node(limits={"tcp_message_timeout": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", node.sip_port)
    try:
        c = SipClient(("127.0.0.1", node.sip_port), "tcp")
        c.local = writer.get_extra_info("sockname")[:2]
        msg = c.build("OPTIONS", "sip:node@127.0.0.1", [("Content-Type", "text/plain")], b"x" * 100)
        head_end = msg.index(b"\r\n\r\n") + 4
        start = 0 if part == "header" else head_end
        writer.write(msg[:start])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        closed = False
        for b in msg[start:]:
            writer.write(bytes([b]))  # each byte resets the idle clock
            if await _closed_soon(reader, 0.2):
                closed = True
                break
        assert closed
        assert loop.time() - t0 < 4.0
        assert await metric(node, "sip_tcp_closed_total", reason="message-timeout") == 1
    finally:
        writer.close()


async def test_complete_messages_sent_slowly_keep_their_connection(make_node):
    node = await make_node(limits={"tcp_message_timeout": 0.5})
    c = await SipClient(("127.0.0.1", node.sip_port), "tcp").open()
    try:
        for _ in range(4):
            assert await _options(c) == 200
            await asyncio.sleep(0.4)  # the connection idles between messages
        assert await metric(node, "sip_tcp_closed_total", reason="message-timeout") == 0
    finally:
        c.close()
