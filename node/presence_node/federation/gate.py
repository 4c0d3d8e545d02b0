"""Inbound connections to the cluster channel, counted from TCP accept.

Anyone who can reach the channel's port can open connections to it; only a
peer holding the cluster secret can authenticate (its hello, the first
message).  So until then a connection is held briefly and in bounded
numbers: at most ``max_unauthenticated`` in all and
``max_unauthenticated_per_source`` from one address (beyond, it is closed
at once), each closed ``auth_timeout`` seconds after accept unless it has
authenticated by then.  The count starts before the TLS handshake and
before the HTTP upgrade, which aiohttp would otherwise wait for without
limit.

The gate sits between the listening socket and aiohttp's request handler
(a protocol in front of the handler's), because aiohttp offers no hook at
accept time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from typing import Callable, cast

from ..config import Federation as FederationConfig
from ..metrics import Counting
from ..net.tls import Forwarding, accept_tls

log = logging.getLogger(__name__)


class Gate:
    def __init__(
        self,
        handler: Callable[[], asyncio.Protocol],
        config: FederationConfig,
        tls: Callable[[], ssl.SSLContext | None],
        metrics: Counting,
    ) -> None:
        self.handler = handler
        self.config = config
        self.tls = tls
        self.metrics = metrics
        self.pending: Counter[str] = Counter()
        self.authenticated = 0
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._open: set[_Connection] = set()

    def protocol(self) -> asyncio.Protocol:
        return _Connection(self)

    def authenticate(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection's hello was good: it no longer counts as pending
        and its timer stops."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None:
            conn.authenticated()

    def close(self) -> None:
        """Drop every connection still open (the channel is closing)."""
        for conn in list(self._open):
            if conn.transport is not None:
                conn.cut = True
                conn.transport.abort()

    @property
    def unauthenticated(self) -> int:
        return sum(self.pending.values())

    def _admit(self, source: str) -> str | None:
        if self.pending[source] >= self.config.max_unauthenticated_per_source:
            return "per-source"
        if self.unauthenticated >= self.config.max_unauthenticated:
            return "total"
        self.pending[source] += 1
        return None

    def _release(self, source: str) -> None:
        self.pending[source] -= 1
        if self.pending[source] <= 0:
            del self.pending[source]


class _Connection(Forwarding):
    """One accepted TCP connection: admitted or closed, then (after TLS,
    when configured) handed to aiohttp's handler, to which it forwards
    every event."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.source = ""
        self.pending = False
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.app_transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: Closed by the gate (its deadline, the channel closing), not by
        #: the peer or a failed handshake.
        self.cut = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # the TLS handshake is done: its transport
            self._start(transport)
            return
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.source = peer[0] if peer else "?"
        refused = self.gate._admit(self.source)
        if refused is not None:
            self.gate.metrics.count("cluster_connections_refused", refused)
            transport.abort()
            return
        self.pending = True
        self.gate._open.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.gate.config.auth_timeout, self._expire)
        ctx = self.gate.tls()
        if ctx is None:
            self._start(transport)
        else:  # uvloop's transport is no asyncio.Transport instance
            accept_tls(cast(asyncio.Transport, transport), self, ctx, self.gate.config.auth_timeout, self._handshake_done)

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        if self.inner is not None:
            return  # done, and connection_made came with the TLS transport
        # Failed, or the connection went before it ended.
        if not self.cut:
            self.gate.metrics.count("cluster_connections_closed", "tls")
        e = None if waiter.cancelled() else waiter.exception()
        log.debug("cluster channel TLS handshake with %s failed: %r", self.source, e)
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(None)  # which does not reach us before the handshake ends

    def _start(self, transport: asyncio.BaseTransport) -> None:
        self.app_transport = transport
        self.gate._by_transport[transport] = self
        self.inner = self.gate.handler()
        self.inner.connection_made(transport)

    def authenticated(self) -> None:
        if self.pending:
            self.pending = False
            self.gate._release(self.source)
            self.gate.authenticated += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.timer = None
        if self.pending and self.transport is not None:
            self.gate.metrics.count("cluster_connections_closed", "auth-timeout")
            self.cut = True
            (self.app_transport or self.transport).abort()
            self.transport.abort()

    # -- forwarded to aiohttp's handler ----------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate._open.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self.pending = False
            self.gate._release(self.source)
        elif self.inner is not None:
            self.gate.authenticated -= 1
        if self.app_transport is not None:
            self.gate._by_transport.pop(self.app_transport, None)
        if self.inner is not None:
            self.inner.connection_lost(exc)
