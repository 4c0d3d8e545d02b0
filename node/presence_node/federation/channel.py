"""The cluster channel's I/O: one WebSocket link to each peer, plus a
listener for theirs.

Each node sends on its own outbound links and receives on the links its
peers opened, so a message from A to B always travels A's link to B, in
order.  A link reconnects with exponential back-off; while it is down,
messages to that peer are dropped but still numbered, so the peer sees the
gap when the link returns and asks for a resync (:mod:`.wire`).  An idle
link carries a heartbeat every ``heartbeat`` seconds, which also tells the
peer our latest sequence number; a peer not heard from for
``peer_timeout`` seconds counts as down.

A connection opens with the receiver's challenge (a fresh nonce and the
largest frame it accepts) and the sender's hello, a sealed message carrying
that nonce like every later one (:mod:`.wire`).  Until the hello, the
connection is counted and timed by the :mod:`.gate` and may carry one frame
of at most ``max_frame`` bytes; a bad hello closes it.  Larger messages
travel in chunks, reassembled up to ``max_message``, from authenticated
peers only.  Refusals are counted; the warning about them is logged once per
source per ``WARN_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from ..config import Config, split_hostport
from ..metrics import Counting
from .gate import Gate
from .tls import TlsFiles
from .wire import LAST, MORE, Admission, Envelope, Rejected, challenge, frames, read_challenge, seal, unseal

log = logging.getLogger(__name__)

__all__ = ["Channel"]

PATH = "/cluster"
#: Bad messages on one authenticated inbound connection before it is closed.
MAX_REJECTS = 20
#: Seconds between two warnings about refused messages from one source.
WARN_INTERVAL = 10.0
#: Largest frame a sender accepts from the receiver: its challenge.
CHALLENGE_MAX = 1024
#: HTTP upgrade request bounds for the listener (aiohttp's defaults allow
#: 128 headers of 8 KiB before the handler sees the request).
HTTP_LIMITS = {"max_line_size": 2048, "max_field_size": 2048, "max_headers": 32}


@dataclass
class _Link:
    peer: str
    url: str
    seq: int = 0
    ws: aiohttp.ClientWebSocketResponse | None = None
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    #: The receiver's challenge and frame size, for the connection open now.
    nonce: str = ""
    max_frame: int = 0


class _Throttle:
    """At most one event per key per ``interval``; ``allow`` says how many
    were held back since the last one allowed (None: hold this one)."""

    def __init__(self, interval: float, keys: int = 1024) -> None:
        self.interval = interval
        self.keys = keys
        self._seen: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float) -> int | None:
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self.keys:  # bounded: forget the quiet ones
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0


class Channel:
    def __init__(
        self,
        config: Config,
        secret: bytes,
        on_message: Callable[[Envelope, int], Awaitable[None]],
        on_connected: Callable[[str], None],
        metrics: Counting,
        clock: Callable[[], float] = time.time,
    ) -> None:
        fed = config.federation
        assert config.cluster_id is not None
        self.config = config
        self.cluster = config.cluster_id
        self.node = config.node_id
        self.secret = secret
        self.on_message = on_message
        self.on_connected = on_connected
        self.metrics = metrics
        self.clock = clock
        self.boot = int(clock() * 1000)
        self.admission = Admission(self.cluster, self.node, frozenset(p.id for p in fed.peers), fed.max_skew)
        self.tls: TlsFiles | None = None
        if fed.tls_cert_file is not None and fed.tls_key_file is not None and fed.tls_ca_file is not None:
            self.tls = TlsFiles(fed.tls_cert_file, fed.tls_key_file, fed.tls_ca_file)
        scheme = "https" if self.tls is not None else "http"
        self._links = {
            p.id: _Link(p.id, "{}://{}:{}{}".format(scheme, *_bracket(*split_hostport(p.address)), PATH))
            for p in fed.peers
        }
        self.heard: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._inbound: set[web.WebSocketResponse] = set()
        #: The authenticated inbound connection of each peer (a newer one replaces it).
        self._by_sender: dict[str, web.WebSocketResponse] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self._warned = _Throttle(WARN_INTERVAL)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self.gate: Gate | None = None
        self.port = 0

    # -- sending -------------------------------------------------------------

    def send(self, peer: str, kind: str, body: dict[str, Any]) -> None:
        """Number, seal and queue one message; dropped if the link is down
        (the receiver will see the gap)."""
        link = self._links[peer]
        data = self._seal(link, kind, body)
        self.metrics.count("cluster_messages_sent", kind)
        if link.ws is not None:
            link.queue.put_nowait(data)

    def _seal(self, link: _Link, kind: str, body: dict[str, Any]) -> bytes:
        link.seq += 1
        env = Envelope(self.cluster, self.node, link.peer, link.nonce, self.boot, link.seq, self.clock(), kind, body)
        return seal(self.secret, env)

    def up(self, peer: str) -> bool:
        heard = self.heard.get(peer)
        return heard is not None and self.clock() - heard < self.config.federation.peer_timeout

    def connected(self, peer: str) -> bool:
        return self._links[peer].ws is not None

    # -- lifecycle -----------------------------------------------------------

    def connections(self) -> dict[str, int]:
        """Inbound connections now, for the ``cluster_connections`` gauge."""
        if self.gate is None:
            return {}
        return {"unauthenticated": self.gate.unauthenticated, "authenticated": self.gate.authenticated}

    async def start(self) -> None:
        app = web.Application(client_max_size=1024)
        app.router.add_get(PATH, self._accept)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, **HTTP_LIMITS)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self.gate = Gate(server, self.config.federation, self._server_tls, self.metrics)
        host, port = split_hostport(self.config.federation.listen)
        self._server = await asyncio.get_running_loop().create_server(self.gate.protocol, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks = [asyncio.ensure_future(self._run(link)) for link in self._links.values()]

    def _server_tls(self) -> ssl.SSLContext | None:
        return self.tls.server() if self.tls is not None else None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
        for ws in list(self._inbound):
            await ws.close()
        if self.gate is not None:
            self.gate.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- outbound ---------------------------------------------------------------

    async def _run(self, link: _Link) -> None:
        backoff = 0.05
        timeout = aiohttp.ClientTimeout(total=None, connect=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    tls = self.tls.client() if self.tls is not None else True
                    async with session.ws_connect(link.url, max_msg_size=CHALLENGE_MAX, autoping=True, ssl=tls) as ws:
                        msg = await asyncio.wait_for(ws.receive(), self.config.federation.auth_timeout)
                        if msg.type != aiohttp.WSMsgType.BINARY:
                            raise Rejected("malformed", f"no challenge but {msg.type.name}")
                        link.nonce, link.max_frame = read_challenge(msg.data)
                        backoff = 0.05
                        link.ws = ws
                        log.info("cluster link up", extra={"peer": link.peer})
                        self.send(link.peer, "hello", {})  # first on the link
                        self.on_connected(link.peer)
                        await self._pump(link, ws)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError, Rejected) as e:
                    log.debug("cluster link to %s failed: %s", link.peer, e)
                finally:
                    if link.ws is not None:
                        log.info("cluster link down", extra={"peer": link.peer})
                    link.ws = None
                    while not link.queue.empty():  # lost: the peer will see the gap
                        link.queue.get_nowait()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _pump(self, link: _Link, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Write queued messages (a heartbeat when idle) until the peer
        closes the link."""
        reader = asyncio.ensure_future(ws.receive())  # completes on close
        try:
            while not ws.closed:
                getter = asyncio.ensure_future(link.queue.get())
                done, _ = await asyncio.wait(
                    {getter, reader}, timeout=self.config.federation.heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                if reader in done:
                    getter.cancel()
                    return
                if getter in done:
                    data = getter.result()
                else:
                    getter.cancel()
                    data = self._seal(link, "heartbeat", {})
                    self.metrics.count("cluster_messages_sent", "heartbeat")
                for frame in frames(data, link.max_frame):
                    await ws.send_bytes(frame)
        finally:
            reader.cancel()

    # -- inbound ------------------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        fed = self.config.federation
        # aiohttp refuses a message of max_msg_size bytes and up.
        ws = web.WebSocketResponse(max_msg_size=fed.max_frame + 1, autoping=True)
        await ws.prepare(request)
        nonce = secrets.token_hex(16)
        await ws.send_bytes(challenge(nonce, fed.max_frame))
        self._inbound.add(ws)
        sender: str | None = None
        try:
            sender = await self._hello(ws, request.remote or "?", nonce)
            if sender is not None:
                assert self.gate is not None
                self.gate.authenticate(request.transport)
                self._replace(sender, ws)
                await self._read(ws, request.remote or "?", nonce)
        finally:
            self._inbound.discard(ws)
            if sender is not None and self._by_sender.get(sender) is ws:
                del self._by_sender[sender]
        return ws

    async def _hello(self, ws: web.WebSocketResponse, source: str, nonce: str) -> str | None:
        """The sender of a good hello (the first message, one frame), or None
        after closing the connection."""
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == bytes([LAST]):
            env = await self.receive(msg.data[1:], nonce, source, hello=True)
            if env is not None:
                return env.sender
        elif msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            self._refused(Rejected("malformed", "expected a hello in one frame"), source)
        elif msg.type == aiohttp.WSMsgType.ERROR:
            self._error(msg)
            return None
        else:  # closed before a word
            return None
        self.metrics.count("cluster_connections_closed", "auth-failed")
        await ws.close()
        return None

    async def _read(self, ws: web.WebSocketResponse, source: str, nonce: str) -> None:
        """Messages after the hello, reassembled from their chunks."""
        rejects = 0
        parts: list[bytes] = []
        size = 0
        async for msg in ws:
            data = msg.data if msg.type == aiohttp.WSMsgType.BINARY else b""
            flag = data[0] if data else None
            if flag == MORE:
                parts.append(data[1:])
                size += len(data) - 1
                if size > self.config.federation.max_message:
                    self._refused(Rejected("too-large", f"over {self.config.federation.max_message} bytes"), source)
                    self.metrics.count("cluster_connections_closed", "too-large")
                    break
                continue
            if flag != LAST:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    self._error(msg)
                    break
                self._refused(Rejected("malformed", f"{msg.type.name} frame"), source)
                rejects += 1
            else:
                if parts:
                    parts.append(data[1:])
                    data, parts, size = b"".join(parts), [], 0
                else:
                    data = data[1:]
                if await self.receive(data, nonce, source) is None:
                    rejects += 1
            if rejects >= MAX_REJECTS:
                self.metrics.count("cluster_connections_closed", "rejects")
                break

    def _replace(self, sender: str, ws: web.WebSocketResponse) -> None:
        """One authenticated connection per peer: a newer one (the peer
        reconnected before we saw the old one die) closes the older."""
        old = self._by_sender.get(sender)
        self._by_sender[sender] = ws
        if old is not None and not old.closed:
            self.metrics.count("cluster_connections_closed", "replaced")
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _error(self, msg: aiohttp.WSMessage) -> None:
        """aiohttp closed the connection: a frame over ``max_frame`` (seen
        in its header, before any of it is buffered) or a protocol error."""
        too_big = isinstance(msg.data, aiohttp.WebSocketError) and msg.data.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        self.metrics.count("cluster_connections_closed", "frame-too-large" if too_big else "protocol-error")

    async def receive(self, data: bytes, nonce: str, source: str, *, hello: bool = False) -> Envelope | None:
        """Authenticate, admit and hand on one message; None if refused.
        ``hello``: it must be the connection's hello."""
        try:
            env = unseal(self.secret, data)
            if hello != (env.kind == "hello"):
                raise Rejected("malformed", "a hello first, and only first")
            skipped = self.admission.admit(env, self.clock(), nonce)
        except Rejected as e:
            self._refused(e, source)
            return None
        self.heard[env.sender] = self.clock()
        self.metrics.count("cluster_messages_received", env.kind)
        if skipped:
            self.metrics.count("cluster_messages_lost", env.sender, skipped)
        try:
            await self.on_message(env, skipped)
        except Exception:
            log.exception("cluster message failed", extra={"kind": env.kind, "peer": env.sender})
        return env

    def _refused(self, e: Rejected, source: str) -> None:
        """Counted each time; logged once per source per WARN_INTERVAL (a
        flood of forged messages must not flood the log)."""
        self.metrics.count("cluster_messages_rejected", e.reason)
        held = self._warned.allow(source, time.monotonic())
        if held is not None:
            log.warning("cluster message refused", extra={"reason": str(e), "source": source, "held_back": held})


def _bracket(host: str, port: int) -> tuple[str, int]:
    return (f"[{host}]" if ":" in host else host), port
