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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import aiohttp
from aiohttp import web

from ..config import Config, split_hostport
from .wire import Admission, Envelope, Rejected, seal, unseal

log = logging.getLogger(__name__)

PATH = "/cluster"
MAX_MESSAGE = 16 * 1024 * 1024
#: Bad messages on one inbound connection before it is closed.
MAX_REJECTS = 20


class ChannelMetrics(Protocol):
    def count(self, name: str, label: str, n: int = 1) -> None: ...


@dataclass
class _Link:
    peer: str
    url: str
    seq: int = 0
    ws: aiohttp.ClientWebSocketResponse | None = None
    queue: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)


class Channel:
    def __init__(
        self,
        config: Config,
        secret: bytes,
        on_message: Callable[[Envelope, int], Awaitable[None]],
        on_connected: Callable[[str], None],
        metrics: ChannelMetrics,
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
        self._links = {
            p.id: _Link(p.id, "http://{}:{}{}".format(*_bracket(*split_hostport(p.address)), PATH)) for p in fed.peers
        }
        self.heard: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._inbound: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
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
        env = Envelope(self.cluster, self.node, link.peer, self.boot, link.seq, self.clock(), kind, body)
        return seal(self.secret, env)

    def up(self, peer: str) -> bool:
        heard = self.heard.get(peer)
        return heard is not None and self.clock() - heard < self.config.federation.peer_timeout

    def connected(self, peer: str) -> bool:
        return self._links[peer].ws is not None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_MESSAGE)
        app.router.add_get(PATH, self._accept)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = split_hostport(self.config.federation.listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._tasks = [asyncio.ensure_future(self._run(link)) for link in self._links.values()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ws in list(self._inbound):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- outbound ---------------------------------------------------------------

    async def _run(self, link: _Link) -> None:
        backoff = 0.05
        timeout = aiohttp.ClientTimeout(total=None, connect=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.ws_connect(link.url, max_msg_size=MAX_MESSAGE, autoping=True) as ws:
                        backoff = 0.05
                        link.ws = ws
                        log.info("cluster link up", extra={"peer": link.peer})
                        self.on_connected(link.peer)
                        await self._pump(link, ws)
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
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
                await ws.send_bytes(data)
        finally:
            reader.cancel()

    # -- inbound ------------------------------------------------------------------

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, autoping=True)
        await ws.prepare(request)
        self._inbound.add(ws)
        rejects = 0
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    self.metrics.count("cluster_messages_rejected", "malformed")
                    rejects += 1
                elif not await self.receive(msg.data):
                    rejects += 1
                if rejects >= MAX_REJECTS:
                    break
        finally:
            self._inbound.discard(ws)
        return ws

    async def receive(self, data: bytes) -> bool:
        """Authenticate, admit and hand on one message; False if refused."""
        try:
            env = unseal(self.secret, data)
            skipped = self.admission.admit(env, self.clock())
        except Rejected as e:
            self.metrics.count("cluster_messages_rejected", e.reason)
            log.warning("cluster message refused", extra={"reason": str(e)})
            return False
        self.heard[env.sender] = self.clock()
        self.metrics.count("cluster_messages_received", env.kind)
        if skipped:
            self.metrics.count("cluster_messages_lost", env.sender, skipped)
        try:
            await self.on_message(env, skipped)
        except Exception:
            log.exception("cluster message failed", extra={"kind": env.kind, "peer": env.sender})
        return True


def _bracket(host: str, port: int) -> tuple[str, int]:
    return (f"[{host}]" if ":" in host else host), port
