"""Robustness of the SIP core against hostile bytes.

1. Hypothesis properties of the parser and stream framer: nothing but
   ParseError escapes for any input; valid messages round-trip through
   ``serialise_message``; compact forms, folded lines, multi-valued headers
   and header-name case are read as RFC 3261 §7.3 says.
2. A mutation fuzz: a few thousand mutated SIP requests over UDP to a running
   node, after which it still answers, logged no internal error, and holds
   exactly the state the accepted requests among them created.

Deterministic (Hypothesis derandomised, the mutator seeded) and fast.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from presence_node.sip.errors import ParseError
from presence_node.sip.message import COMPACT, Headers, Request, Response, serialise_message
from presence_node.sip.parser import StreamFramer, parse

from sipclient import SipClient
from wire import pidf, snapshot, tag

PROPS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
token = st.text(TOKEN_CHARS, min_size=1, max_size=12)
header_name = token.filter(lambda n: n.lower() not in ("content-length", "l"))
header_value = st.text(
    st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=40
).map(str.strip)
uri = st.builds(lambda s, u, h: f"{s}:{u}@{h}", st.sampled_from(["sip", "sips", "tel", "x-foo"]), token, token)

SIP_PIECES = [
    b"SUBSCRIBE sip:bob@example.com SIP/2.0", b"SIP/2.0 200 OK", b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\t",
    b":", b";", b",", b"Content-Length: ", b"l: ", b"Via: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1",
    b"CSeq: 1 SUBSCRIBE", b"0", b"5", b"99999999999", b"-1", b"\x00", b"\xff", b"\xc3\xa9", b"<sip:a@b>",
    b"Call-ID: x", b"f: <sip:a@b>;tag=1", b"t: <sip:b@c>", b"Event: presence",
]
sip_ish = st.lists(st.sampled_from(SIP_PIECES) | st.binary(max_size=8), max_size=40).map(b"".join)


# -- parser properties -----------------------------------------------------------


@PROPS
@given(data=st.binary(max_size=3000) | sip_ish, datagram=st.booleans())
@example(data=b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", datagram=True)
@example(data=b"SIP/2.0 " + b"2" * 5000 + b" OK\r\n\r\n", datagram=True)
@example(data=b"\r\n\r\n", datagram=False)
def test_parse_raises_only_parse_error(data, datagram):
    try:
        msg = parse(data, datagram=datagram)
    except ParseError:
        return
    assert isinstance(msg, (Request, Response))


@PROPS
@given(chunks=st.lists(st.binary(max_size=400) | sip_ish, max_size=12))
@example(chunks=[b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"])
@example(chunks=[b"OPTIONS sip:a@b SIP/2.0\r\nl: 99999999999\r\n\r\n"])
def test_stream_framer_raises_only_parse_error(chunks):
    framer = StreamFramer()
    try:
        for chunk in chunks:
            for m in framer.feed(chunk):
                assert isinstance(m, bytes) and m
    except ParseError:
        return


def _headers(pairs: list[tuple[str, str]]) -> Headers:
    return Headers(pairs)


requests = st.builds(
    lambda m, u, hs, body: Request(m, u, _headers(hs), body),
    token, uri, st.lists(st.tuples(header_name, header_value), max_size=12), st.binary(max_size=200),
)
responses = st.builds(
    lambda c, r, hs, body: Response(c, r, _headers(hs), body),
    st.integers(100, 699), header_value, st.lists(st.tuples(header_name, header_value), max_size=12),
    st.binary(max_size=200),
)


@PROPS
@given(msg=requests | responses, datagram=st.booleans())
def test_valid_messages_round_trip(msg, datagram):
    data = serialise_message(msg)
    back = parse(data, datagram=datagram)
    assert type(back) is type(msg)
    if isinstance(msg, Request):
        assert (back.method, back.uri) == (msg.method, msg.uri)
    else:
        assert (back.code, back.reason) == (msg.code, msg.reason)
    expected = list(msg.headers) + [("content-length", str(len(msg.body)))]
    assert list(back.headers) == expected
    assert back.body == msg.body
    assert serialise_message(back) == data


@PROPS
@given(msgs=st.lists(requests | responses, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 5000), max_size=8),
       keepalive=st.booleans())
def test_stream_framer_cuts_messages_back_apart(msgs, cuts, keepalive):
    wire = [serialise_message(m) for m in msgs]
    stream = (b"\r\n\r\n" if keepalive else b"").join(wire)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    framer = StreamFramer()
    out: list[bytes] = []
    last = 0
    for p in points + [len(stream)]:
        out += framer.feed(stream[last:p])
        last = p
    assert out == wire
    assert [serialise_message(parse(m, datagram=False)) for m in out] == wire


@PROPS
@given(short=st.sampled_from(sorted(COMPACT)), value=header_value.filter(bool), upper=st.booleans())
def test_compact_forms_are_their_long_names(short, value, upper):
    if COMPACT[short] == "content-length":
        value = "0"
    name = short.upper() if upper else short
    data = f"OPTIONS sip:a@b SIP/2.0\r\n{name}: {value}\r\nContent-Length: 0\r\n\r\n".encode()
    msg = parse(data)
    assert msg.headers.get(COMPACT[short]) == value
    assert short not in msg.headers


@PROPS
@given(
    words=st.lists(st.text(string.ascii_letters + string.digits + "<>@;=.", min_size=1, max_size=10), min_size=1,
                   max_size=6),
    folds=st.lists(st.sampled_from(["\r\n ", "\r\n\t", "\r\n   ", "\r\n \t "]), min_size=6, max_size=6),
)
def test_folded_header_lines_are_joined(words, folds):
    value = words[0] + "".join(f + w for f, w in zip(folds, words[1:]))
    data = f"OPTIONS sip:a@b SIP/2.0\r\nSubject: {value}\r\nCall-ID: c1\r\nContent-Length: 0\r\n\r\n".encode()
    msg = parse(data)
    assert msg.headers.get("subject") == " ".join(words)
    assert msg.headers.get("call-id") == "c1"


@PROPS
@given(lines=st.lists(st.lists(st.text(string.ascii_letters + string.digits + ".;=@:", min_size=1, max_size=10),
                               min_size=1, max_size=4), min_size=1, max_size=4),
       spaced=st.booleans())
def test_multiple_values_per_header(lines, spaced):
    sep = " , " if spaced else ","
    text = "".join(f"Allow-Events: {sep.join(vals)}\r\nX-Other: y\r\n" for vals in lines)
    msg = parse(f"OPTIONS sip:a@b SIP/2.0\r\n{text}Content-Length: 0\r\n\r\n".encode())
    assert msg.headers.values("allow-events") == [v for vals in lines for v in vals]
    assert len(msg.headers.lines("allow-events")) == len(lines)
    assert msg.headers.values("x-other") == ["y"] * len(lines)


@PROPS
@given(name=st.sampled_from(["Call-ID", "CSeq", "Via", "From", "To", "Event", "Expires", "SIP-If-Match",
                             "Subscription-State", "Max-Forwards"]),
       flips=st.lists(st.booleans(), min_size=20, max_size=20), value=header_value.filter(bool))
def test_header_names_are_case_insensitive(name, flips, value):
    cased = "".join(ch.upper() if f else ch.lower() for ch, f in zip(name, flips))
    msg = parse(f"OPTIONS sip:a@b SIP/2.0\r\n{cased}: {value}\r\nContent-Length: 0\r\n\r\n".encode())
    assert msg.headers.get(name.lower()) == value
    assert msg.headers.lines(name.lower()) == [value]


# -- mutation fuzz over UDP -------------------------------------------------------


class FuzzPeer(asyncio.DatagramProtocol):
    """Sends raw datagrams, keeps every response, answers every NOTIFY."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.unparsable: list[bytes] = []
        self.notifies = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.last_rx = 0.0

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        self.last_rx = asyncio.get_running_loop().time()
        try:
            msg = parse(data)
        except ParseError:
            self.unparsable.append(data)
            return
        if isinstance(msg, Request):
            if msg.method == "NOTIFY":
                self.notifies += 1
                assert self.transport is not None
                self.transport.sendto(SipClient.response_to(msg, 200), addr)
            return
        self.responses.append(msg)


def _templates(i: int) -> list[bytes]:
    """Valid requests, distinct per iteration and the same on every run (so
    the seeded mutations are too).

    SUBSCRIBEs watch other resources than the PUBLISHes change, so accepted
    publications fan out to nobody (a NOTIFY storm would only test socket
    buffers).  Via has ``rport``, so answers go to the source port whatever
    the Via says; Contacts name a host that is not an IP, so any NOTIFY goes
    back to the source address too (never to some other port on this
    machine, whatever the mutation)."""
    port = 5999
    cid = f"fuzz{i:08d}@fuzz"
    via = f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{i:012d};rport"
    common = f"{via}\r\nMax-Forwards: 70\r\nFrom: <sip:fz{i % 7}@example.com>;tag=f{i}\r\nCall-ID: {cid}\r\n"
    contact = f"Contact: <sip:fz@fuzz.invalid:{port}>\r\n"
    w = f"w{i % 5}@watch.example.com"
    p = f"p{i % 5}@pub.example.com"
    body = pidf(f"p{i % 5}", domain="pub.example.com")
    return [
        (f"SUBSCRIBE sip:{w} SIP/2.0\r\n{common}To: <sip:{w}>\r\n"
         f"CSeq: 1 SUBSCRIBE\r\n{contact}Event: presence\r\nExpires: 600\r\nAccept: application/pidf+xml\r\n"
         f"Content-Length: 0\r\n\r\n").encode(),
        (f"SUBSCRIBE sip:{w} SIP/2.0\r\n{common}To: <sip:{w}>\r\n"
         f"CSeq: 1 SUBSCRIBE\r\n{contact}Event: dialog\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n").encode(),
        (f"SUBSCRIBE sip:{w} SIP/2.0\r\n{common}To: <sip:{w}>;tag=nosuch{i}\r\n"
         f"CSeq: 2 SUBSCRIBE\r\n{contact}Event: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode(),
        (f"PUBLISH sip:{p} SIP/2.0\r\n{common}To: <sip:{p}>\r\n"
         f"CSeq: 1 PUBLISH\r\n{contact}Event: presence\r\nExpires: 600\r\n"
         f"Content-Type: application/pidf+xml\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body,
        (f"PUBLISH sip:{p} SIP/2.0\r\n{common}To: <sip:{p}>\r\n"
         f"CSeq: 1 PUBLISH\r\nEvent: presence\r\nExpires: 0\r\nSIP-If-Match: bogus.{i}\r\n"
         f"Content-Length: 0\r\n\r\n").encode(),
        (f"OPTIONS sip:{w} SIP/2.0\r\n{common}To: <sip:{w}>\r\n"
         f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
        (f"NOTIFY sip:{w} SIP/2.0\r\n{common}To: <sip:{w}>;tag=x{i}\r\n"
         f"CSeq: 1 NOTIFY\r\n{contact}Event: presence\r\nSubscription-State: active\r\n"
         f"Content-Length: 0\r\n\r\n").encode(),
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(9)
    b = bytearray(data)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(b))
            b[pos] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == 1:  # truncation
        return bytes(b[: rng.randrange(len(b))])
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if kind == 2:  # duplicate a header line
        j = rng.randrange(1, len(lines))
        lines.insert(rng.randrange(1, len(lines) + 1), lines[j])
    elif kind == 3:  # remove a header line
        del lines[rng.randrange(1, len(lines))]
    elif kind == 4:  # garbage body, with or without a matching Content-Length
        body = rng.randbytes(rng.randrange(0, 1500))
        if rng.random() < 0.5:
            lines = [l for l in lines if not l.lower().startswith(b"content-length")]
    elif kind == 5:  # swap two lines (possibly the request line)
        j, k = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[j], lines[k] = lines[k], lines[j]
    elif kind == 6:  # random bytes inserted somewhere
        whole = bytearray(head)
        pos = rng.randrange(len(whole) + 1)
        whole[pos:pos] = rng.randbytes(rng.randint(1, 6))
        lines = bytes(whole).split(b"\r\n")
    elif kind == 7:  # a header value replaced by something odd
        j = rng.randrange(1, len(lines))
        name = lines[j].split(b":", 1)[0]
        odd = rng.choice([b"", b"0", b"-1", b"99999999999", b"<", b"\"", b";;;", b",,,", b"\xff\xfe",
                          b"sip:", b"<sip:@>", b" " * 50, b"a" * 3000, b"1 SUBSCRIBE", b"SIP/2.0/UDP"])
        lines[j] = name + b": " + odd
    else:  # header names in odd case or compact form, folded lines
        j = rng.randrange(1, len(lines))
        line = lines[j]
        if rng.random() < 0.5:
            lines[j] = bytes(c ^ 0x20 if 65 <= (c & ~0x20) <= 90 and rng.random() < 0.5 else c for c in line)
        else:
            lines[j] = line.replace(b" ", b"\r\n ", 1)
    return b"\r\n".join(lines) + sep + body


async def test_mutation_fuzz_over_udp(make_node, make_client, caplog):
    caplog.set_level(logging.WARNING)
    node = await make_node(
        subscription_expiry={"min": 60, "default": 3600, "max": 3600},
        publication_expiry={"min": 60, "default": 3600, "max": 3600},
    )
    # State made by well-behaved clients first; the fuzz must not touch it.
    bob = await make_client("bob", target=node)
    r = await bob.publish(pidf("bob"))
    assert r.code == 200
    alice = await make_client("alice", target=node)
    resp, d = await alice.subscribe("sip:bob@example.com")
    assert resp.code == 200
    await alice.dialog_notifies(d, 1)
    before = await snapshot(node)
    before_subs = {row[0] for row in before[1]}
    before_pubs = {row[2] for row in before[2]}

    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(FuzzPeer, local_addr=("127.0.0.1", 0))
    try:
        rng = random.Random(20240611)
        sent = 0
        for batch in range(30):
            for i in range(100):
                n = batch * 100 + i
                templates = _templates(n)
                data = _mutate(rng, templates[n % len(templates)])
                transport.sendto(data, ("127.0.0.1", node.sip_port))
                sent += 1
            # Let the node answer this batch before the next one (no drops).
            t0 = loop.time()
            await asyncio.sleep(0.01)
            while loop.time() - max(peer.last_rx, t0) < 0.02:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert sent == 3000

        # It still serves valid requests.
        c = await make_client("carol", target=node)
        assert (await c.request(c.build("OPTIONS", "sip:bob@example.com"))).code == 200
        resp, d2 = await c.subscribe("sip:bob@example.com")
        assert resp.code == 200
        await c.dialog_notifies(d2, 1)
        r2 = await bob.publish(pidf("bob", note="after"), etag=r.headers.get("sip-etag"))
        assert r2.code == 200
        ns = await alice.dialog_notifies(d, 2)
        assert b"after" in ns[1].body

        # No internal error on any input.
        assert peer.unparsable == [], f"the node sent something that is not SIP: {peer.unparsable}"
        codes = [m.code for m in peer.responses]
        assert 500 not in codes
        errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert errors == [], errors[0].getMessage() if errors else ""
        assert len(peer.responses) > 1000  # most mutations are still answerable

        # State: exactly what the accepted mutated requests created.
        new_subs = {
            tag(m.headers.get("to"))
            for m in peer.responses
            if m.code == 200
            and (m.headers.get("cseq") or "").endswith(" SUBSCRIBE")
            and (m.headers.get("expires") or "0") != "0"
        }
        new_pubs = {
            m.headers.get("sip-etag")
            for m in peer.responses
            if m.code == 200 and (m.headers.get("cseq") or "").endswith(" PUBLISH") and m.headers.get("sip-etag")
        }
        assert new_subs and new_pubs  # some mutations are harmless and were accepted
        after = await snapshot(node)
        subs_after = {row[0] for row in after[1]}
        pubs_after = {row[2] for row in after[2]}
        assert subs_after == before_subs | new_subs | {d2.to_tag}
        # bob's publication was modified (new etag) by the valid PUBLISH above
        assert pubs_after == (before_pubs - {r.headers.get("sip-etag")}) | {r2.headers.get("sip-etag")} | new_pubs
        kept = [row for row in after[1] if row[0] in before_subs]
        assert kept == [row for row in before[1]]
    finally:
        transport.close()
