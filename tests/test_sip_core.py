"""Section A of rfc-behaviours.md (S01-S12): SIP core behaviour as UAS and
notifier, checked over real UDP and TCP sockets against a node on loopback.

Each test is named after the statement it checks.  Negative cases
(malformed requests, wrong Max-Forwards, unknown methods) check both the
answer and that stored state is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import pytest

from presence_node.sip.headers import parse_name_addr, parse_via
from presence_node.sip.message import Request
from presence_node.sip.parser import StreamFramer, parse

from bodies import pidf
from sipclient import SipClient, new_tag
from wire import cseq_num, pidf, publications, raw_request, silence, snapshot, subscriptions, tag

BOB = "sip:bob@example.com"


def responses_in(client: SipClient) -> list[bytes]:
    """The responses the client received, but those to its round trips."""
    return [r for r in client.raw if r.startswith(b"SIP/2.0 ") and b"@round-trip" not in r]


# -- S01 -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["SUBSCRIBE", "PUBLISH", "OPTIONS"])
async def test_s01_response_copies_via_from_callid_cseq(make_client, method):
    c = await make_client("alice")
    branch = "z9hG4bK" + new_tag()
    top = f"SIP/2.0/UDP {c.local[0]}:{c.local[1]};branch={branch};rport"
    lower = ["SIP/2.0/UDP proxy1.example.com:5070;branch=z9hG4bKp1", "SIP/2.0/TCP 192.0.2.7;branch=z9hG4bKp2;received=192.0.2.8"]
    extra = {
        "SUBSCRIBE": ["Event: presence", "Expires: 600"],
        "PUBLISH": ["Event: presence", "Expires: 600", "Content-Type: application/pidf+xml"],
        "OPTIONS": [],
    }[method]
    body = pidf("alice") if method == "PUBLISH" else b""
    call_id = f"{uuid.uuid4().hex}@host.example"
    # Two more Via values: one comma-separated on the top line, one on its own line.
    data = raw_request(c, method, c.aor if method == "PUBLISH" else BOB, extra, body, call_id=call_id,
                       cseq=f"77 {method}", via=f"{top}, {lower[0]}")
    data = data.replace(b"\r\nMax-Forwards:", f"\r\nVia: {lower[1]}\r\nMax-Forwards:".encode(), 1)
    req = parse(data)
    c.send_bytes(data)
    resp = await c.response()
    assert resp.code == 200
    vias = resp.headers.values("via")
    assert len(vias) == 3
    assert vias[1:] == lower
    assert vias[0].startswith(top)  # extended only by received/rport (S02)
    assert resp.headers.get("from") == req.headers.get("from")
    assert resp.headers.get("call-id") == call_id
    assert resp.headers.get("cseq") == f"77 {method}"
    to = parse_name_addr(resp.headers.get("to"))
    assert to.uri == parse_name_addr(req.headers.get("to")).uri
    if method in ("SUBSCRIBE", "PUBLISH"):
        assert to.tag, "a final response to an out-of-dialog request needs a To tag"


@pytest.mark.parametrize(
    "case",
    ["bad-event", "too-brief", "cseq-mismatch", "require-foo"],
)
async def test_s01_error_responses_add_to_tag(make_node, make_client, case):
    """Error responses to out-of-dialog requests are final responses too."""
    node = await make_node(subscription_expiry={"min": 60, "default": 3600, "max": 3600})
    c = await make_client("alice", target=node)
    hs = {
        "bad-event": ["Event: no-such-package", "Expires: 600"],
        "too-brief": ["Event: presence", "Expires: 5"],
        "cseq-mismatch": ["Event: presence", "Expires: 600"],
        "require-foo": ["Event: presence", "Expires: 600", "Require: foo"],
    }[case]
    cseq = "1 PUBLISH" if case == "cseq-mismatch" else None
    resp = await c.request(raw_request(c, "SUBSCRIBE", BOB, hs, cseq=cseq))
    assert resp.code >= 400
    assert tag(resp.headers.get("to")), f"{resp.code} without a To tag"


async def test_s01_in_dialog_response_keeps_the_to_tag(make_client):
    c = await make_client("alice")
    resp, d = await c.subscribe(BOB)
    assert resp.code == 200
    r2 = await c.resubscribe(d, 600)
    assert r2.code == 200
    assert tag(r2.headers.get("to")) == d.to_tag
    assert (r2.headers.get("to") or "").count("tag=") == 1


# -- S02 -------------------------------------------------------------------------


async def test_s02_rport_response_goes_to_source_port(make_client):
    c = await make_client("alice")
    decoy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        decoy.bind(("127.0.0.1", 0))
        decoy.setblocking(False)
        decoy_port = decoy.getsockname()[1]
        assert decoy_port != c.local[1]
        for method, hs in (("OPTIONS", []), ("SUBSCRIBE", ["Event: presence", "Expires: 600"])):
            via = f"SIP/2.0/UDP 127.0.0.1:{decoy_port};branch=z9hG4bK{new_tag()};rport"
            resp = await c.request(raw_request(c, method, BOB, hs, via=via))
            assert resp.code == 200
            top = parse_via(resp.headers.values("via")[0])
            assert top.params.get("rport") == str(c.local[1])
            assert top.params.get("received") == "127.0.0.1"
            assert top.port == decoy_port  # sent-by itself untouched
        with pytest.raises(BlockingIOError):
            decoy.recv(65535)  # nothing went to the port named in Via
    finally:
        decoy.close()


async def test_s02_rport_with_value_already_present_is_kept(make_client):
    """A Via that already carries ``rport=N`` is not rewritten (only an empty
    rport asks us to fill it in); the answer still reaches the sender."""
    c = await make_client("alice")
    via = f"SIP/2.0/UDP 127.0.0.1:{c.local[1]};branch=z9hG4bK{new_tag()};rport=1234"
    resp = await c.request(raw_request(c, "OPTIONS", BOB, [], via=via))
    assert resp.code == 200
    assert parse_via(resp.headers.values("via")[0]).params.get("rport") == "1234"


# -- S03 -------------------------------------------------------------------------


async def test_s03_retransmitted_subscribe_is_absorbed(node, make_client):
    c = await make_client("alice")
    call_id = f"{uuid.uuid4().hex}@test"
    data = c.build("SUBSCRIBE", BOB, [("Event", "presence"), ("Expires", "600")], call_id=call_id)
    c.send_bytes(data)
    first = await c.response()
    assert first.code == 200
    await c.wait_notifies(1, where=lambda n: n.headers.get("call-id") == call_id)
    before = await snapshot(node)
    first_bytes = responses_in(c)
    assert len(first_bytes) == 1
    for _ in range(3):
        c.send_bytes(data)
        again = await c.response()
        assert again.code == 200
    await c.round_trip()
    resp_bytes = responses_in(c)
    assert len(resp_bytes) == 4
    assert all(b == first_bytes[0] for b in resp_bytes), "the same final response must be re-sent"
    assert await snapshot(node) == before
    assert len(await subscriptions(node)) == 1
    assert len([n for n in c.notifies if n.headers.get("call-id") == call_id]) == 1


async def test_s03_retransmission_in_flight_creates_one_subscription(node, make_client):
    c = await make_client("alice")
    call_id = f"{uuid.uuid4().hex}@test"
    data = c.build("SUBSCRIBE", BOB, [("Event", "presence"), ("Expires", "600")], call_id=call_id)
    for _ in range(5):
        c.send_bytes(data)  # back to back: later copies arrive while the first is processed
    await c.response()
    await c.round_trip()
    resp_bytes = responses_in(c)
    assert 1 <= len(resp_bytes) <= 5
    assert len(set(resp_bytes)) == 1
    assert len(await subscriptions(node)) == 1
    assert len([n for n in c.notifies if n.headers.get("call-id") == call_id]) == 1


async def test_s03_retransmitted_publish_is_absorbed(node, make_client):
    bob = await make_client("bob")
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB)
    await alice.dialog_notifies(d, 1)
    data = bob.build("PUBLISH", BOB, [("Event", "presence"), ("Expires", "600"),
                                      ("Content-Type", "application/pidf+xml")], pidf("bob"))
    first = await bob.request(data)
    assert first.code == 200
    etag = first.headers.get("sip-etag")
    await alice.dialog_notifies(d, 2)
    before = await snapshot(node)
    again = await bob.request(data)
    assert again.headers.get("sip-etag") == etag
    await bob.round_trip()
    rb = responses_in(bob)
    assert len(rb) == 2 and rb[0] == rb[1]
    assert await snapshot(node) == before
    assert [p.etag for p in await publications(node, "bob@example.com")] == [etag]
    assert len(alice.notifies_for(d)) == 2, "a retransmission must not notify again"


async def test_s03_new_branch_is_a_new_transaction(node, make_client):
    """The absorption is per transaction: the same PUBLISH with a new branch
    is processed again (a second publication with its own etag)."""
    bob = await make_client("bob")
    hs = [("Event", "presence"), ("Expires", "600"), ("Content-Type", "application/pidf+xml")]
    r1 = await bob.request(bob.build("PUBLISH", BOB, hs, pidf("bob")))
    r2 = await bob.request(bob.build("PUBLISH", BOB, hs, pidf("bob")))
    assert r1.code == r2.code == 200
    assert r1.headers.get("sip-etag") != r2.headers.get("sip-etag")
    assert len(await publications(node, "bob@example.com")) == 2


# -- S04 -------------------------------------------------------------------------


async def test_s04_options_lists_allow_and_allow_events(make_client):
    c = await make_client("alice")
    resp = await c.request(c.build("OPTIONS", BOB))
    assert resp.code == 200
    allow = {m.strip().upper() for m in resp.headers.values("allow")}
    assert {"SUBSCRIBE", "NOTIFY", "PUBLISH"} <= allow
    events = [e.strip() for e in resp.headers.values("allow-events")]
    assert set(events) == {"presence", "presence.winfo", "dialog", "message-summary", "as-feature-event"}
    assert len(events) == len(set(events))


async def test_s04_allow_events_follows_the_configured_packages(make_node, make_client):
    node = await make_node(packages=["presence"])
    c = await make_client("alice", target=node)
    resp = await c.request(c.build("OPTIONS", BOB))
    assert [e.strip() for e in resp.headers.values("allow-events")] == ["presence"]


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "INFO", "FOOBAR", "REFER", "UPDATE"])
async def test_s04_unknown_method_gets_405_with_allow(node, make_client, method):
    c = await make_client("alice")
    before = await snapshot(node)
    resp = await c.request(c.build(method, BOB, [("Event", "presence")], cseq=3))
    assert resp.code == 405
    allow = {m.strip().upper() for m in resp.headers.values("allow")}
    assert {"SUBSCRIBE", "NOTIFY", "PUBLISH", "OPTIONS"} <= allow
    assert method not in allow
    assert await snapshot(node) == before


# -- S05 -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["SUBSCRIBE", "PUBLISH", "OPTIONS"])
async def test_s05_unknown_require_gets_420_with_unsupported(node, make_client, method):
    c = await make_client("bob")
    before = await snapshot(node)
    hs = [("Event", "presence"), ("Expires", "600"), ("Require", "foo, Bar-Baz")]
    body = b""
    if method == "PUBLISH":
        hs.append(("Content-Type", "application/pidf+xml"))
        body = pidf("bob")
    resp = await c.request(c.build(method, BOB, hs, body))
    assert resp.code == 420
    unsupported = {u.strip().lower() for u in resp.headers.values("unsupported")}
    assert unsupported == {"foo", "bar-baz"}
    await c.round_trip()
    assert await snapshot(node) == before
    assert c.notifies == []


# -- S06 -------------------------------------------------------------------------


async def test_s06_udp_subscribe_without_content_length(node, make_client):
    c = await make_client("alice")
    data = raw_request(c, "SUBSCRIBE", BOB, ["Event: presence", "Expires: 600"], content_length=False)
    assert b"content-length" not in data.lower()
    resp = await c.request(data)
    assert resp.code == 200
    await c.wait_notifies(1)
    assert len(await subscriptions(node)) == 1


async def test_s06_udp_publish_without_content_length_body_is_rest_of_datagram(node, make_client):
    c = await make_client("bob")
    body = pidf("bob", note="linphone style")
    data = raw_request(c, "PUBLISH", BOB, ["Event: presence", "Expires: 600",
                                             "Content-Type: application/pidf+xml"], body, content_length=False)
    resp = await c.request(data)
    assert resp.code == 200, resp.reason
    etag = resp.headers.get("sip-etag")
    [pub] = await publications(node, "bob@example.com")
    assert pub.body == body
    # Linphone's removal PUBLISH: no body and no Content-Length either.
    rm = raw_request(c, "PUBLISH", BOB, ["Event: presence", "Expires: 0", f"SIP-If-Match: {etag}"],
                     content_length=False)
    resp = await c.request(rm)
    assert resp.code == 200
    assert await publications(node, "bob@example.com") == []


# -- S07 -------------------------------------------------------------------------


@pytest.mark.parametrize("with_port", [True, False])
async def test_s07_route_naming_the_node_is_processed_locally(node, make_client, with_port):
    c = await make_client("alice")
    route = f"<sip:127.0.0.1:{node.sip_port};lr>" if with_port else "<sip:127.0.0.1;lr>"
    resp, d = await c.subscribe(BOB, extra=[("Route", route)])
    assert resp.code == 200
    [n] = await c.dialog_notifies(d, 1)
    assert n.headers.get("route") is None  # Route is not a route set; Record-Route is
    bob = await make_client("bob")
    r = await bob.publish(pidf("bob"), extra=[("Route", route)])
    assert r.code == 200
    assert len(await publications(node, "bob@example.com")) == 1


# -- S08 -------------------------------------------------------------------------


async def test_s08_subscribe_and_publish_over_tcp(node, make_client):
    bob = await make_client("bob", "tcp")
    r = await bob.publish(pidf("bob", note="via tcp"))
    assert r.code == 200
    alice = await make_client("alice", "tcp")
    resp, d = await alice.subscribe(BOB)
    assert resp.code == 200
    [n] = await alice.dialog_notifies(d, 1)
    assert b"via tcp" in n.body
    assert parse_via(n.headers.values("via")[0]).transport == "TCP"
    [sub] = await subscriptions(node)
    assert sub.transport == "tcp"
    # A state change reaches the TCP watcher, and the refresh works over TCP too.
    r = await bob.publish(pidf("bob", note="second"), etag=r.headers.get("sip-etag"))
    assert r.code == 200
    ns = await alice.dialog_notifies(d, 2)
    assert b"second" in ns[1].body
    assert (await alice.resubscribe(d, 600)).code == 200


async def test_s08_large_notify_to_udp_subscriber_goes_over_tcp(node, make_client):
    alice = await make_client("alice")  # UDP
    got: list[bytes] = []
    arrived = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        framer = StreamFramer()
        while data := await reader.read(65536):
            for m in framer.feed(data):
                got.append(m)
                msg = parse(m, datagram=False)
                if isinstance(msg, Request):
                    writer.write(SipClient.response_to(msg, 200))
                    arrived.set()

    # A TCP listener on the very port of the subscriber's UDP socket.
    server = await asyncio.start_server(on_conn, "127.0.0.1", alice.local[1])
    try:
        bob = await make_client("bob")
        big = pidf("bob", pad=2500)
        r = await bob.publish(big)
        assert r.code == 200
        resp, d = await alice.subscribe(BOB)
        assert resp.code == 200
        await asyncio.wait_for(arrived.wait(), 3)
        [data] = got
        msg = parse(data, datagram=False)
        assert isinstance(msg, Request) and msg.method == "NOTIFY"
        assert len(data) > 1300
        assert msg.body == big
        assert msg.headers.get("call-id") == d.call_id
        assert parse_via(msg.headers.values("via")[0]).transport == "TCP", \
            "the top Via must name the transport actually used (RFC 3261 §18.1.1)"
        await alice.round_trip()
        assert alice.notifies_for(d) == [], "the large NOTIFY must not also go over UDP"
        # Answered over TCP, so the subscription lives on (no Timer F removal).
        await asyncio.sleep(0.2)
        assert len(await subscriptions(node, watcher="alice@example.com")) == 1
    finally:
        server.close()
        for w in writers:
            w.close()
        await server.wait_closed()


async def test_s08_small_notify_to_udp_subscriber_stays_on_udp(make_client):
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob"))).code == 200
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB)
    [n] = await alice.dialog_notifies(d, 1)
    assert parse_via(n.headers.values("via")[0]).transport == "UDP"


# -- S09 -------------------------------------------------------------------------


async def test_s09_notify_cseq_rises_by_one(make_client):
    bob = await make_client("bob")
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB)
    await alice.dialog_notifies(d, 1)
    r = await bob.publish(pidf("bob", note="1"))
    await alice.dialog_notifies(d, 2)
    r = await bob.publish(pidf("bob", note="2"), etag=r.headers.get("sip-etag"))
    await alice.dialog_notifies(d, 3)
    assert (await alice.resubscribe(d, 600)).code == 200
    await alice.dialog_notifies(d, 4)
    assert (await alice.resubscribe(d, 0)).code == 200
    ns = await alice.dialog_notifies(d, 5)
    nums = [cseq_num(n) for n in ns]
    assert nums == list(range(nums[0], nums[0] + 5))
    assert all((n.headers.get("cseq") or "").split()[1] == "NOTIFY" for n in ns)


async def test_s09_lower_in_dialog_cseq_gets_500(node, make_client):
    c = await make_client("alice")
    _, d = await c.subscribe(BOB)
    assert (await c.resubscribe(d, 600, cseq=10)).code == 200
    before = await snapshot(node)
    resp = await c.resubscribe(d, 1200, cseq=5)
    assert resp.code == 500
    assert await snapshot(node) == before
    # The dialog survives: a higher CSeq still works.
    assert (await c.resubscribe(d, 600, cseq=11)).code == 200


# -- S10 -------------------------------------------------------------------------


@pytest.mark.parametrize("mismatch", ["to-tag", "call-id", "from-tag", "event"])
async def test_s10_in_dialog_subscribe_without_dialog_gets_481(node, make_client, mismatch):
    c = await make_client("alice")
    _, d = await c.subscribe(BOB)
    await c.dialog_notifies(d, 1)
    before = await snapshot(node)
    to_tag = "nosuchtag" if mismatch == "to-tag" else d.to_tag
    call_id = "other@test" if mismatch == "call-id" else d.call_id
    from_tag = "othertag" if mismatch == "from-tag" else d.from_tag
    event = "dialog" if mismatch == "event" else "presence"
    data = c.build("SUBSCRIBE", BOB, [("Event", event), ("Expires", "600")], call_id=call_id,
                   from_tag=from_tag, to_tag=to_tag, cseq=2)
    resp = await c.request(data)
    assert resp.code == 481
    assert await snapshot(node) == before
    await c.round_trip()
    assert len(c.notifies_for(d)) == 1


# -- S11 -------------------------------------------------------------------------


async def test_s11_notify_is_built_from_the_dialog(make_client):
    c = await make_client("alice")
    from_value = f"\"Alice\" <{c.aor}>;tag=abc123;x-param=1"
    call_id = f"{uuid.uuid4().hex}@host.example"
    hs = [
        "Event: presence",
        "Expires: 600",
    ]
    data = (
        f"SUBSCRIBE {BOB} SIP/2.0\r\n"
        f"Via: {c.via()}\r\nMax-Forwards: 70\r\n"
        f"From: {from_value}\r\n"
        f"To: \"Bob\" <{BOB}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n"
        f"Contact: <sip:alice@{c.local[0]}:{c.local[1]};ob>\r\n" + "".join(h + "\r\n" for h in hs) + "\r\n"
    ).encode()
    resp = await c.request(data)
    assert resp.code == 200
    to_tag = tag(resp.headers.get("to"))
    [n] = await c.wait_notifies(1)
    assert n.uri == f"sip:alice@{c.local[0]}:{c.local[1]};ob"
    assert n.headers.get("to") == from_value
    frm = parse_name_addr(n.headers.get("from"))
    assert frm.uri == BOB and frm.tag == to_tag and frm.display == "Bob"
    assert n.headers.get("call-id") == call_id
    assert n.headers.get("route") is None
    assert n.headers.get("contact"), "NOTIFY needs a Contact (the notifier's local target)"


async def test_s11_notify_follows_the_record_route_set(make_client):
    c = await make_client("alice")
    # The first route hop is the test client itself, so the NOTIFY reaches
    # it; the Contact names an address nobody listens on.
    rr = [f"<sip:127.0.0.1:{c.local[1]};lr;ftag=x>", "<sip:proxy2.example.com;lr>"]
    contact = "sip:alice@192.0.2.55:5099"
    data = raw_request(c, "SUBSCRIBE", BOB, ["Event: presence", "Expires: 600", f"Record-Route: {rr[0]}",
                                              f"Record-Route: {rr[1]}"])
    data = data.replace(f"Contact: <{c.contact}>".encode(), f"Contact: <{contact}>".encode())
    resp = await c.request(data)
    assert resp.code == 200
    # RFC 3261 §12.1.1: the 2xx that creates the dialog copies Record-Route.
    assert resp.headers.values("record-route") == rr
    [n] = await c.wait_notifies(1)
    assert n.uri == contact
    assert n.headers.values("route") == rr


async def test_s11_refresh_updates_the_remote_target(make_client):
    """SUBSCRIBE is a target refresh request (RFC 6665 §4.1.2.1): a new
    Contact in a refresh is where later NOTIFYs go."""
    c = await make_client("alice")
    _, d = await c.subscribe(BOB)
    await c.dialog_notifies(d, 1)
    new_contact = f"sip:alice-new@{c.local[0]}:{c.local[1]}"
    data = c.build("SUBSCRIBE", BOB, [("Event", "presence"), ("Expires", "600")], call_id=d.call_id,
                   from_tag=d.from_tag, to_tag=d.to_tag, cseq=2, with_contact=False)
    data = data.replace(b"Event:", f"Contact: <{new_contact}>\r\nEvent:".encode(), 1)
    assert (await c.request(data)).code == 200
    ns = await c.dialog_notifies(d, 2)
    assert ns[1].uri == new_contact


# -- S12 -------------------------------------------------------------------------


async def test_s12_cancel_of_subscribe_is_answered_and_changes_nothing(node, make_client):
    c = await make_client("alice")
    branch = "z9hG4bK" + new_tag()
    call_id = f"{uuid.uuid4().hex}@test"
    from_tag = new_tag()
    sub = c.build("SUBSCRIBE", BOB, [("Event", "presence"), ("Expires", "600")], call_id=call_id,
                  from_tag=from_tag, branch=branch)
    assert (await c.request(sub)).code == 200
    await c.wait_notifies(1)
    before = await snapshot(node)
    cancel = c.build("CANCEL", BOB, call_id=call_id, from_tag=from_tag, branch=branch, with_contact=False)
    resp = await c.request(cancel)
    assert resp.code == 200
    assert (resp.headers.get("cseq") or "").split()[1] == "CANCEL"
    await c.round_trip()
    assert await snapshot(node) == before
    assert len(c.notifies) == 1, "a CANCEL must not end the subscription"


async def test_s12_cancel_matching_nothing_gets_481(node, make_client):
    c = await make_client("alice")
    before = await snapshot(node)
    resp = await c.request(c.build("CANCEL", BOB, branch="z9hG4bK" + new_tag(), with_contact=False))
    assert resp.code == 481
    assert await snapshot(node) == before


async def test_s12_cancel_of_publish_keeps_the_publication(node, make_client):
    c = await make_client("bob")
    branch = "z9hG4bK" + new_tag()
    call_id = f"{uuid.uuid4().hex}@test"
    pub = c.build("PUBLISH", BOB, [("Event", "presence"), ("Expires", "600"),
                                   ("Content-Type", "application/pidf+xml")], pidf("bob"),
                  call_id=call_id, from_tag="ft1", branch=branch)
    assert (await c.request(pub)).code == 200
    resp = await c.request(c.build("CANCEL", BOB, call_id=call_id, from_tag="ft1", branch=branch,
                                   with_contact=False))
    assert resp.code == 200
    assert len(await publications(node, "bob@example.com")) == 1


# -- malformed requests (RFC 3261 §8.2, §18.3): 400 when answerable, else silence --


def _valid(c: SipClient) -> bytes:
    return raw_request(c, "SUBSCRIBE", BOB, ["Event: presence", "Expires: 600"])


MALFORMED = {
    # name: (mutation of a valid SUBSCRIBE, expected status or None for silence)
    "cseq-method-mismatch": (lambda d: d.replace(b"CSeq: 1 SUBSCRIBE", b"CSeq: 1 PUBLISH"), 400),
    "cseq-not-a-number": (lambda d: d.replace(b"CSeq: 1 SUBSCRIBE", b"CSeq: one SUBSCRIBE"), 400),
    "no-call-id": (lambda d: b"\r\n".join(l for l in d.split(b"\r\n") if not l.startswith(b"Call-ID")), 400),
    "no-from": (lambda d: b"\r\n".join(l for l in d.split(b"\r\n") if not l.startswith(b"From")), 400),
    "bad-from": (lambda d: d.replace(b"From: <sip:", b"From: <nonsense"), 400),
    "header-without-colon": (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards 70"), 400),
    "content-length-too-big": (lambda d: d.replace(b"Content-Length: 0", b"Content-Length: 500"), 400),
    "content-length-not-a-number": (lambda d: d.replace(b"Content-Length: 0", b"Content-Length: x"), 400),
    "sip-version-3": (lambda d: d.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
    "non-utf8-header": (lambda d: d.replace(b"Max-Forwards: 70", b"Subject: \xff\xfe"), 400),
    "bad-expires": (lambda d: d.replace(b"Expires: 600", b"Expires: soon"), 400),
    "max-forwards-not-a-number": (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: lots"), 400),
    "max-forwards-zero": (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 483),
    # Numbers too long for int() (over 4300 digits) must not become internal errors.
    "max-forwards-huge": (lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: " + b"7" * 5000), 400),
    "cseq-huge": (lambda d: d.replace(b"CSeq: 1 SUBSCRIBE", b"CSeq: " + b"1" * 5000 + b" SUBSCRIBE"), 400),
    "expires-huge": (lambda d: d.replace(b"Expires: 600", b"Expires: " + b"6" * 5000), 400),
    "content-length-huge": (lambda d: d.replace(b"Content-Length: 0", b"Content-Length: " + b"0" * 4999 + b"1"), 400),
    "no-contact": (lambda d: b"\r\n".join(l for l in d.split(b"\r\n") if not l.startswith(b"Contact")), 400),
    "from-without-tag": (lambda d: d.replace(b";tag=", b";xtag="), 400),
    # Nothing to answer with: no Via, or not SIP at all, or a stray response.
    "no-via": (lambda d: b"\r\n".join(l for l in d.split(b"\r\n") if not l.startswith(b"Via")), None),
    "garbage": (lambda d: b"\x00\x01\x02 hello there \xff" * 10, None),
    "no-end-of-headers": (lambda d: d.split(b"\r\n\r\n")[0], 400),
    "bad-via": (lambda d: d.replace(b"Via: SIP/2.0/UDP", b"Via: HTTP/1.1"), None),
    "stray-response": (lambda d: b"SIP/2.0 200 OK\r\n" + d.split(b"\r\n", 1)[1], None),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_request_gets_400_or_silence_and_changes_nothing(node, make_client, name, caplog):
    caplog.set_level(logging.WARNING)
    c = await make_client("alice")
    # Some stored state to protect.
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob"))).code == 200
    _, d = await c.subscribe(BOB)
    await c.dialog_notifies(d, 1)
    before = await snapshot(node)
    mutate, expected = MALFORMED[name]
    c.send_bytes(mutate(_valid(c)))
    if expected is None:
        assert await silence(c) == []
    else:
        resp = await c.response()
        assert resp.code == expected, resp.reason
        assert tag(resp.headers.get("to")), "final response to an out-of-dialog request needs a To tag (S01)"
    await c.round_trip()
    assert await snapshot(node) == before
    assert len(c.notifies) == 1
    # And the node still serves valid requests from the same source, and
    # logged no internal error on the way.
    assert (await c.request(c.build("OPTIONS", BOB))).code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_max_forwards_zero_options_is_answered(make_client):
    """OPTIONS with Max-Forwards 0 is for us (RFC 3261 §11): 200, not 483."""
    c = await make_client("alice")
    data = c.build("OPTIONS", BOB).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert (await c.request(data)).code == 200


async def test_malformed_over_tcp_closes_only_that_connection(node, make_client):
    bad = await make_client("mallory", "tcp")
    bad.send_bytes(b"SUBSCRIBE sip:bob@example.com SIP/2.0\r\nVia: x\r\n\r\n")  # no Content-Length
    await asyncio.sleep(0.2)
    good = await make_client("alice", "tcp")
    resp, d = await good.subscribe(BOB)
    assert resp.code == 200
    await good.dialog_notifies(d, 1)


@pytest.mark.parametrize("method", ["SUBSCRIBE", "PUBLISH"])
async def test_rfc3261_8_2_2_2_merged_request_gets_482_and_changes_nothing(node, make_client, method):
    """A request without a To tag whose From tag, Call-ID and CSeq match a
    transaction we already have, but that is not that transaction (another
    branch: it forked and came back by another path), is a merged request:
    482 Loop Detected, and the first one's effect only.  A retransmission
    (same branch) is still absorbed, and a new CSeq is a new request."""
    c = await make_client("alice")
    call_id = f"{uuid.uuid4().hex}@test"
    if method == "SUBSCRIBE":
        headers, body = [("Event", "presence"), ("Expires", "600")], b""
    else:
        headers = [("Event", "presence"), ("Expires", "600"), ("Content-Type", "application/pidf+xml")]
        body = pidf("sip:alice@127.0.0.1")
    uri = BOB if method == "SUBSCRIBE" else "sip:alice@127.0.0.1"
    first = c.build(method, uri, headers, body, call_id=call_id, from_tag="ft1", branch="z9hG4bK-merge-a")
    c.send_bytes(first)
    assert (await c.response()).code == 200
    before = await snapshot(node)
    merged = c.build(method, uri, headers, body, call_id=call_id, from_tag="ft1", branch="z9hG4bK-merge-b")
    c.send_bytes(merged)
    resp = await c.response()
    assert resp.code == 482
    c.send_bytes(first)  # a retransmission of the first: absorbed, its 200 again
    assert (await c.response()).code == 200
    await c.round_trip()
    assert await snapshot(node) == before
    fresh = c.build(method, uri, headers, body, call_id=call_id, from_tag="ft1", cseq=2, branch="z9hG4bK-merge-c")
    c.send_bytes(fresh)
    assert (await c.response()).code != 482


def test_merged_request_detection_lasts_as_long_as_the_transaction():
    """The table itself: the origin of a held transaction makes another key
    MERGED; once the transaction is forgotten (Timer J, or at once over
    TCP, or abandoned), the origin is free again."""
    from presence_node.sip.transaction import MERGED, ServerTransactions

    t = ServerTransactions(t1=0.5)
    o = ServerTransactions.origin("ft", "cid", 1, "SUBSCRIBE")
    assert t.begin("a", o) is None
    assert t.begin("b", o) is MERGED
    t.complete("a", b"SIP/2.0 200 OK", now=0.0, reliable=False)
    assert t.begin("b", o) is MERGED  # completed but held for Timer J
    assert t.begin("a", o) == b"SIP/2.0 200 OK"  # a retransmission, not merged
    t.sweep(32.0)
    assert t.begin("b", o) is None  # a new request now
    t.complete("b", b"SIP/2.0 200 OK", now=32.0, reliable=True)  # TCP: forgotten at once
    assert t.begin("c", o) is None
    t.abandon("c")
    assert t.begin("d", o) is None
    assert t.begin("e", None) is None  # in-dialog requests are not checked


def test_transaction_table_accounts_the_bytes_it_retains():
    """#12.8: every completed entry counts its key and response; Timer J,
    TCP and abandonment leave nothing counted."""
    from presence_node.sip.transaction import ServerTransactions

    t = ServerTransactions(t1=0.5, budget=1_000_000)
    assert t.retained == 0
    sizes = []
    for i, n in enumerate((100, 1000, 10)):
        key = f"k{i}"
        assert t.begin(key) is None
        assert t.retained == sum(sizes)  # in progress: nothing retained yet
        t.complete(key, b"x" * n, now=float(i), reliable=False)
        sizes.append(t.retained - sum(sizes))
        assert sizes[-1] >= n + len(key)
    assert sizes[1] - sizes[0] == 900  # the accounting follows the response's length
    assert t.begin("tcp") is None
    t.complete("tcp", b"x" * 5000, now=3.0, reliable=True)  # forgotten at once
    assert t.begin("dropped") is None
    t.abandon("dropped")
    assert t.retained == sum(sizes)
    t.sweep(0.5 * 64 + 0.5)  # k0's Timer J only
    assert t.retained == sum(sizes[1:])
    t.sweep(100.0)
    assert t.retained == 0 and len(t) == 0 and t.evicted == 0


def test_transaction_table_over_budget_forgets_the_oldest_first():
    """#12.8: over the byte budget, the oldest completed responses go first
    (the least likely to be asked for again); the newest are still resent."""
    from presence_node.sip.transaction import ServerTransactions

    t = ServerTransactions(t1=0.5, budget=3 * 1200)
    for i in range(10):
        assert t.begin(f"k{i}") is None
        t.complete(f"k{i}", b"%d" % i * 1000, now=float(i), reliable=False)
        assert t.retained <= t.budget
    kept = [i for i in range(10) if t.exists(f"k{i}")]
    assert kept == list(range(10 - len(kept), 10)) and 1 <= len(kept) <= 3
    assert t.evicted == 10 - len(kept)
    assert t.begin("k9") == b"9" * 1000  # a retransmission of a kept one: its response
    assert t.begin("k0") is None  # an evicted one is a new request (now in progress)
    assert t.begin("k0") is not None


def test_transaction_table_keys_are_bounded():
    """#12.8: keys and origins made of attacker-sized values (a 16 KB
    branch or Call-ID) are held as a fixed-size digest, still distinct."""
    from presence_node.sip.transaction import ServerTransactions

    long_branch = "z9hG4bK" + "a" * 16000
    k1 = ServerTransactions.key(long_branch, "h:5060", "OPTIONS", "")
    k2 = ServerTransactions.key(long_branch + "b", "h:5060", "OPTIONS", "")
    k3 = ServerTransactions.key(long_branch, "h:5060", "PUBLISH", "")
    assert max(len(k1), len(k2), len(k3)) <= 100 and len({k1, k2, k3}) == 3
    assert ServerTransactions.key("z9hG4bKshort", "h:5060", "OPTIONS", "") == "z9hG4bKshort\x00h:5060\x00OPTIONS"
    o1 = ServerTransactions.origin("ft", "c" * 16000, 1, "SUBSCRIBE")
    o2 = ServerTransactions.origin("ft", "c" * 16000, 2, "SUBSCRIBE")
    assert max(len(o1), len(o2)) <= 100 and o1 != o2
