"""Helpers shared by the wire-level conformance tests (sections A and B of
rfc-behaviours.md): PIDF bodies, a snapshot of stored state, header readers
and a raw request builder for bytes our own client would never send."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from presence_node.net.transport import Transports
from presence_node.sip.headers import parse_name_addr, parse_params
from presence_node.sip.message import Request, Response

from sipclient import SipClient, new_tag


def pidf(user: str, basic: str = "open", note: str = "", domain: str = "example.com", pad: int = 0) -> bytes:
    """A valid PIDF document; ``pad`` adds that many bytes of note text
    (for NOTIFYs larger than the UDP limit of S08)."""
    text = note + ("x" * pad)
    note_el = f"<note>{text}</note>" if text else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{user}@{domain}">'
        f'<tuple id="t-{user}"><status><basic>{basic}</basic></status>{note_el}</tuple></presence>'
    ).encode()


class FakeClock:
    """The wall clock of a test's in-process nodes, which the test moves:
    the system's time plus what the test advanced.  It keeps running on its
    own, since the node also waits on the event loop's real timers (the
    expiry sweep every ``expiry_interval``, NOTIFY throttling): moving it is
    a jump ahead, as if that much time had passed at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


async def expire(node: Any, clock: FakeClock, seconds: float) -> None:
    """Let ``seconds`` pass on ``node``'s clock and run the expiry sweep its
    timer would run next, so what has expired by then is gone (and its
    NOTIFYs sent) when this returns."""
    clock.advance(seconds)
    await node.expirer.sweep()


async def snapshot(node: Any) -> tuple[Any, ...]:
    """Everything stored that a request could change: counts, and the
    subscription and publication listings with their expiries, etags and
    bodies."""
    now = node.clock()
    subs = await node.storage.list_subscriptions(
        now, presentity=None, watcher=None, event=None, offset=0, limit=10**6
    )
    pubs = await node.storage.list_presentities(now, event=None, offset=0, limit=10**6)
    return (
        await node.storage.counts(),
        sorted((s.id, s.presentity, s.event, s.watcher, s.expires_at, s.remote_cseq, s.contact) for s in subs),
        sorted((p.presentity, p.event, p.etag, p.body, p.expires_at) for p in pubs),
    )


async def subscriptions(node: Any, **filters: Any) -> list[Any]:
    f = {"presentity": None, "watcher": None, "event": None, **filters}
    return await node.storage.list_subscriptions(node.clock(), offset=0, limit=10**6, **f)


async def publications(node: Any, presentity: str | None = None) -> list[Any]:
    rows = await node.storage.list_presentities(node.clock(), event=None, offset=0, limit=10**6)
    return [p for p in rows if presentity is None or p.presentity == presentity]


def tag(header: str | None) -> str | None:
    assert header is not None
    return parse_name_addr(header).tag


def sub_state(n: Request) -> tuple[str, dict[str, str | None]]:
    """``Subscription-State`` as (state, params)."""
    raw = n.headers.get("subscription-state")
    assert raw is not None, "NOTIFY without Subscription-State"
    state, _, rest = raw.partition(";")
    return state.strip().lower(), parse_params(rest)


def cseq_num(m: Request | Response) -> int:
    return int((m.headers.get("cseq") or "").split()[0])


async def silence(client: SipClient) -> list[Request | Response]:
    """Whatever non-NOTIFY messages the node sends for what reached it
    before now (expected: none); see :meth:`SipClient.round_trip`."""
    await client.round_trip()
    out = []
    while not client.inbox.empty():
        out.append(client.inbox.get_nowait())
    return out


def drain(client: SipClient) -> None:
    while not client.inbox.empty():
        client.inbox.get_nowait()


def raw_request(
    client: SipClient,
    method: str,
    uri: str,
    headers: list[str],
    body: bytes = b"",
    *,
    content_length: bool = True,
    via: str | None = None,
    call_id: str | None = None,
    cseq: str | None = None,
) -> bytes:
    """A request written line by line, so a test controls every byte."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via or client.via()}",
        "Max-Forwards: 70",
        f"From: <{client.aor}>;tag={new_tag()}",
        f"To: <{uri}>",
        f"Call-ID: {call_id or uuid.uuid4().hex + '@test'}",
        f"CSeq: {cseq or '1 ' + method}",
        f"Contact: <{client.contact}>",
        *headers,
    ]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Prometheus text → {(sample name, sorted labels): value}."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def datagrams(sock: socket.socket) -> int:
    """How many datagrams wait on a non-blocking socket (read and dropped)."""
    n = 0
    while True:
        try:
            sock.recv(65535)
        except BlockingIOError:
            return n
        n += 1


def silent_udp(host: str = "127.0.0.1") -> socket.socket:
    """A bound, non-blocking UDP socket that never answers: a Contact that
    does not reply (a dead phone, or a third party the node is aimed at)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def bare_transports(t1: float, t2: float) -> Transports:
    """A node's transports alone on a free loopback port, delivering nothing
    up: NOTIFY timer tests without a node, with the timers given."""
    t = Transports(
        lambda *a: None, advertised_host="127.0.0.1", t1=t1, t2=t2, udp_max_size=1300,
        max_size=65535, max_tcp=10, tcp_idle=60.0,
    )
    await t.start("127.0.0.1", 0)
    return t


def admin_url(node, path: str) -> str:  # type: ignore[no-untyped-def]
    """The URL of ``path`` on a test node's admin API."""
    return f"http://127.0.0.1:{node.admin_port}{path}"
