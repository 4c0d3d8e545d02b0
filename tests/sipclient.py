"""The project's own small SIP test client, over real UDP, TCP or TLS
sockets, or a WebSocket (ws, wss: RFC 7118, with aiohttp's client).

It builds requests, keeps what arrives in a queue, and answers NOTIFYs with
200 by default (or with a code a test chooses, or not at all).  It uses the
node's parser to read messages, and nothing else of the node.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Callable

from presence_node.sip.message import Request, Response, serialise
from presence_node.sip.parser import StreamFramer, parse

_counter = itertools.count(1)


def new_tag() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Dialog:
    call_id: str
    from_tag: str
    to_tag: str
    uri: str
    from_uri: str
    event: str
    cseq: int = 1
    extra: dict[str, str] = field(default_factory=dict)


class SipClient:
    def __init__(
        self,
        server: tuple[str, int],
        transport: str = "udp",
        user: str = "alice",
        domain: str = "example.com",
        local_host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        ws_url: str | None = None,
    ):
        self.local_host = local_host
        self.server = server
        self.transport = transport
        self.user = user
        self.domain = domain
        self.inbox: asyncio.Queue[Request | Response] = asyncio.Queue()
        self.notifies: list[Request] = []
        #: Where each of ``notifies`` came from ((host, port) over UDP, None over TCP).
        self.notify_sources: list[tuple[str, int] | None] = []
        self.raw: list[bytes] = []
        #: Code to answer NOTIFYs with; None = do not answer.
        self.notify_answer: int | None = 200
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Transport | None = None
        #: TLS (tls, wss): the context checking the server's certificate.
        self.tls = tls
        self.ws_url = ws_url
        self._ws = None
        self._session = None
        self._reader: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        #: RFC 7118 §5: a WebSocket client has no reachable address of its own.
        self.invalid_host = f"{new_tag()}.invalid"
        self.local = ("127.0.0.1", 0)
        self._notify_event = asyncio.Event()

    # -- plumbing ---------------------------------------------------------------

    async def open(self) -> "SipClient":
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            client = self

            class P(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                    client._on_bytes(data, addr)

            t, _ = await loop.create_datagram_endpoint(P, local_addr=(self.local_host, 0))
            self._udp = t  # type: ignore[assignment]
            self.local = t.get_extra_info("sockname")[:2]
        elif self.transport in ("ws", "wss"):
            import aiohttp

            self._session = aiohttp.ClientSession()
            url = self.ws_url or f"{self.transport}://{self.server[0]}:{self.server[1]}/"
            try:
                self._ws = await self._session.ws_connect(url, protocols=("sip",), ssl=self.tls or False)
            except BaseException:
                await self._session.close()
                raise
            self.local = self._ws.get_extra_info("sockname")[:2]
            self._reader = asyncio.ensure_future(self._read_ws())
        else:
            framer = StreamFramer()
            client = self

            class S(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    for m in framer.feed(data):
                        client._on_bytes(m)

            kw = {"ssl": self.tls, "server_hostname": "localhost"} if self.transport == "tls" else {}
            t, _ = await loop.create_connection(S, *self.server, **kw)
            self._tcp = t  # type: ignore[assignment]
            self.local = t.get_extra_info("sockname")[:2]
        return self

    async def _read_ws(self) -> None:
        import aiohttp

        assert self._ws is not None
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self._on_bytes(msg.data.encode())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self._on_bytes(msg.data)

    def close(self) -> None:
        for t in (self._udp, self._tcp):
            if t is not None:
                t.close()
        if self._ws is not None:
            ws, session, reader = self._ws, self._session, self._reader
            self._ws = None

            async def shut() -> None:
                await ws.close()
                await session.close()
                if reader is not None:
                    reader.cancel()

            task = asyncio.ensure_future(shut())
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def aclose(self) -> None:
        """Close and wait until closed (a WebSocket's close handshake)."""
        self.close()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    def _on_bytes(self, data: bytes, source: tuple[str, int] | None = None) -> None:
        self.raw.append(data)
        msg = parse(data, datagram=self.transport in ("udp", "ws", "wss"))
        if isinstance(msg, Request) and msg.method == "NOTIFY":
            self.notifies.append(msg)
            self.notify_sources.append(source[:2] if source else None)
            self._notify_event.set()
            if self.notify_answer is not None:
                # Answer where the NOTIFY came from: in a cluster that may
                # be another node than the one this client talks to.
                self.send_bytes(self.response_to(msg, self.notify_answer), source)
            return
        self.inbox.put_nowait(msg)

    def send_bytes(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        if self._udp is not None:
            self._udp.sendto(data, to or self.server)
        elif self._ws is not None:
            task = asyncio.ensure_future(self._ws.send_str(data.decode()))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        else:
            assert self._tcp is not None
            self._tcp.write(data)

    # -- building -----------------------------------------------------------------

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def contact(self) -> str:
        if self.transport in ("ws", "wss"):
            return f"sip:{self.user}@{self.invalid_host};transport=ws"
        suffix = f";transport={self.transport}" if self.transport in ("tcp", "tls") else ""
        return f"sip:{self.user}@{self.local[0]}:{self.local[1]}{suffix}"

    def via(self, branch: str | None = None) -> str:
        branch = branch or "z9hG4bK" + new_tag()
        if self.transport in ("ws", "wss"):
            return f"SIP/2.0/{self.transport.upper()} {self.invalid_host};branch={branch}"
        return f"SIP/2.0/{self.transport.upper()} {self.local[0]}:{self.local[1]};branch={branch};rport"

    def build(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        call_id: str | None = None,
        from_tag: str | None = None,
        to: str | None = None,
        to_tag: str | None = None,
        cseq: int = 1,
        branch: str | None = None,
        from_uri: str | None = None,
        with_contact: bool = True,
    ) -> bytes:
        to_value = f"<{to or uri}>" + (f";tag={to_tag}" if to_tag else "")
        hs = [
            ("Via", self.via(branch)),
            ("Max-Forwards", "70"),
            ("From", f"<{from_uri or self.aor}>;tag={from_tag or new_tag()}"),
            ("To", to_value),
            ("Call-ID", call_id or f"{uuid.uuid4().hex}@test"),
            ("CSeq", f"{cseq} {method}"),
        ]
        if with_contact:
            hs.append(("Contact", f"<{self.contact}>"))
        hs.extend(headers or [])
        return serialise(f"{method} {uri} SIP/2.0", hs, body)

    @staticmethod
    def response_to(req: Request, code: int, reason: str = "OK") -> bytes:
        h = req.headers
        hs = [("Via", v) for v in h.values("via")]
        to = h.get("to") or ""
        if ";tag=" not in to:
            to += f";tag={new_tag()}"
        hs += [("From", h.get("from") or ""), ("To", to), ("Call-ID", h.get("call-id") or ""), ("CSeq", h.get("cseq") or "")]
        return serialise(f"SIP/2.0 {code} {reason}", hs)

    # -- receiving ----------------------------------------------------------------

    async def response(self, timeout: float = 3.0, *, final: bool = True) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), max(0.01, deadline - loop.time()))
            if isinstance(msg, Response) and (not final or msg.code >= 200):
                return msg

    async def request(self, data: bytes, timeout: float = 3.0) -> Response:
        self.send_bytes(data)
        return await self.response(timeout)

    async def round_trip(self, timeout: float = 3.0) -> None:
        """Return once everything the node would send this client for what
        reached it before now has arrived: the end of a "nothing else
        arrives" check, instead of sleeping for a while.  Two OPTIONS, one
        after the other's 200.

        Why that suffices, for an in-process node on the memory backend:

        - loopback keeps the order of what is sent (datagrams to one socket,
          a TCP stream), and the node reads its socket in order: the first
          OPTIONS is read after every request or answer sent before it, from
          this client or from one the test already heard back from;
        - a request's work, its NOTIFYs included, runs to completion in the
          step that read it, since nothing in it waits (service/eager.py;
          the memory backend never waits);
        - work a message hands to a task (the answer to a NOTIFY starts the
          NOTIFY of a change that came while it was in flight) runs in the
          event loop's next step, in one step; the node may read the first
          OPTIONS in the same batch of datagrams as that message, so before
          the task runs, but the second OPTIONS, sent once the first's 200
          arrived, is read in a later step than the task's;
        - the node sends on one UDP socket (or this client's connection), so
          what it sent before the second 200 arrives before it.

        Not covered (those tests still wait): what waits on a timer (a
        retransmission, ``min_interval``, the expiry sweep), a database or
        another node."""
        for _ in range(2):
            await self._options(timeout)

    async def _options(self, timeout: float) -> None:
        call_id = f"{uuid.uuid4().hex}@round-trip"
        host, port = self.server
        self.send_bytes(self.build("OPTIONS", f"sip:{host}:{port}", call_id=call_id, with_contact=False))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        others: list[Request | Response] = []
        try:
            while True:
                msg = await asyncio.wait_for(self.inbox.get(), max(0.01, deadline - loop.time()))
                if isinstance(msg, Response) and msg.headers.get("call-id") == call_id:
                    if msg.code >= 200:
                        assert msg.code == 200, f"OPTIONS answered {msg.code}"
                        return
                else:
                    others.append(msg)
        finally:
            for msg in others:  # left for the test, in their order
                self.inbox.put_nowait(msg)

    async def wait_notifies(self, n: int, timeout: float = 3.0, where: Callable[[Request], bool] | None = None) -> list[Request]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            got = [m for m in self.notifies if where is None or where(m)]
            if len(got) >= n:
                return got
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"expected {n} NOTIFY, got {len(got)}")
            self._notify_event.clear()
            try:
                await asyncio.wait_for(self._notify_event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # -- high level ---------------------------------------------------------------

    async def publish(
        self,
        body: bytes | None,
        *,
        event: str = "presence",
        ctype: str = "application/pidf+xml",
        etag: str | None = None,
        expires: int | None = 3600,
        uri: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> Response:
        uri = uri or self.aor
        hs = [("Event", event)]
        if expires is not None:
            hs.append(("Expires", str(expires)))
        if etag:
            hs.append(("SIP-If-Match", etag))
        if body:
            hs.append(("Content-Type", ctype))
        hs += extra or []
        return await self.request(self.build("PUBLISH", uri, hs, body or b""))

    async def subscribe(
        self,
        uri: str,
        *,
        event: str = "presence",
        expires: int | None = 3600,
        accept: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> tuple[Response, Dialog]:
        call_id = f"{uuid.uuid4().hex}@test"
        tag = new_tag()
        hs = [("Event", event)]
        if expires is not None:
            hs.append(("Expires", str(expires)))
        if accept:
            hs.append(("Accept", accept))
        hs += extra or []
        resp = await self.request(self.build("SUBSCRIBE", uri, hs, call_id=call_id, from_tag=tag))
        to_tag = ""
        to = resp.headers.get("to") or ""
        if ";tag=" in to:
            to_tag = to.split(";tag=", 1)[1].split(";")[0]
        return resp, Dialog(call_id, tag, to_tag, uri, self.aor, event)

    async def resubscribe(self, d: Dialog, expires: int, *, cseq: int | None = None) -> Response:
        d.cseq = cseq if cseq is not None else d.cseq + 1
        hs = [("Event", d.event), ("Expires", str(expires))]
        data = self.build(
            "SUBSCRIBE", d.uri, hs, call_id=d.call_id, from_tag=d.from_tag, to_tag=d.to_tag, cseq=d.cseq
        )
        return await self.request(data)

    def notifies_for(self, d: Dialog) -> list[Request]:
        return [n for n in self.notifies if n.headers.get("call-id") == d.call_id]

    def senders_for(self, d: Dialog) -> list[tuple[str, int] | None]:
        """The source address of each of :meth:`notifies_for` (the node that sent it)."""
        return [s for n, s in zip(self.notifies, self.notify_sources) if n.headers.get("call-id") == d.call_id]

    async def dialog_notifies(self, d: Dialog, n: int, timeout: float = 3.0) -> list[Request]:
        return await self.wait_notifies(n, timeout, lambda m: m.headers.get("call-id") == d.call_id)
