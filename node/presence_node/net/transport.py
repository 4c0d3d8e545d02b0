"""The only place with sockets: UDP, TCP, TLS and WebSocket listeners,
NOTIFY sending.

:class:`Transports` is the notifier's :class:`~..service.notify.Sender`.
It owns the client transaction table and arms one loop timer for its next
deadline (retransmission or Timer F), instead of a timer per NOTIFY.
Destinations follow RFC 3263 loosely: the first Route, else the Contact;
a host name we would have to resolve is replaced by the address the
SUBSCRIBE came from (the NAT case RFC 3581 exists for).

Hostile peers (#12): a send the operating system refuses fails that one
transaction with 503 and nothing else; UDP NOTIFYs to an address that has
not answered one yet are bounded (:mod:`.targets`, reflection); a TCP peer
that does not read is closed once too much is queued for it; one source IP
holds a bounded number of connections, and a message must arrive whole
within ``message_timeout`` of its first byte (slowloris).

TLS and WebSocket connections (#15.5, #15.6) are TCP connections with a
layer on top, held by the same :class:`TcpConnection` and the same
registry, so every bound above applies to them too and counts them
together: a connection is counted from accept, and its TLS handshake (and,
for WebSocket, its HTTP upgrade) must end within ``message_timeout``.
Their watchers are reached only over the connection their SUBSCRIBE came
on (its *flow*, as RFC 5626 and RFC 7118 have it: a browser or a phone
behind NAT accepts no connection, and a TLS client has no certificate to
be called back on).  When that connection closes, the subscriptions whose
NOTIFYs it carried end at once (removed as on a NOTIFY timeout, counted in
``sip_flows_closed``), instead of staying until they expire; a NOTIFY for
a flow this node does not hold (closed, or held by another node of a
cluster) fails the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import struct
from functools import partial
from typing import Any, Callable, Optional, cast

from ..metrics import Counting
from ..sip.errors import ParseError
from ..sip.headers import parse_name_addr, parse_uri
from ..sip.message import split_commas
from ..sip.parser import StreamFramer
from ..sip.transaction import RETRANSMIT, ClientTransactions
from ..storage import Subscription
from ..tasks import Tasks
from .targets import SEND, WAIT, Targets
from .tls import Forwarding, accept_tls
from .websocket import text_frame

log = logging.getLogger(__name__)

#: (data, source host, source port, transport, send, when the kernel received
#: it as time.time() or None when unknown)
Receive = Callable[[bytes, str, int, str, Callable[[bytes], None], Optional[float]], None]
OnDone = Callable[[int], None]
SOCKET_BUFFER = 4 * 1024 * 1024
#: Seconds between sweeps of the TCP connections at most (idle, slow message).
SWEEP = 5.0
#: What sendto may raise for an address it cannot use (uvloop: ValueError).
SEND_ERRORS = (OSError, ValueError)
#: Transports whose watchers are reached only over their own connection.
FLOWS = frozenset({"tls", "ws", "wss"})
#: How the notifier writes a final NOTIFY's state (its flow is then let go).
_TERMINATED = b"\r\nSubscription-State: terminated"


class _NoMetrics:
    def count(self, name: str, label: str, n: int = 1) -> None:
        pass


def _is_ip(host: str) -> bool:
    """An IP literal (no DNS needed)?  inet_pton is C, ipaddress is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host.strip("[]"))
        return True
    except (OSError, ValueError):
        return False


#: SO_TIMESTAMPNS (Linux; Python 3.11 has no constant): the kernel stamps
#: each datagram with the time it was received (CLOCK_REALTIME).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
#: Datagrams read per readiness event before other work gets a turn.
READ_BATCH = 64


class UdpSocket:
    """The UDP listener, read with recvmsg rather than through a
    DatagramProtocol: only recvmsg gives the kernel's receive time, and
    that time is how long a request waited in the receive buffer before
    we read it, the part of its delay an overloaded node never sees
    otherwise (a 4 MB buffer holds seconds of requests)."""

    def __init__(self, sock: socket.socket, receive: Receive) -> None:
        self.sock = sock
        self.receive = receive
        for opt, value in ((SO_TIMESTAMPNS, 1), (socket.SO_RCVBUF, SOCKET_BUFFER), (socket.SO_SNDBUF, SOCKET_BUFFER)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, value)
            except OSError:
                pass  # without timestamps a request's wait counts from when we read it
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        for _ in range(READ_BATCH):
            try:
                data, ancillary, _, addr = sock.recvmsg(65536, _ANCILLARY)  # the largest datagram
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("udp error", extra={"error": str(e)})
                return
            arrived = None
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    arrived = sec + nsec * 1e-9
            self.receive(data, addr[0], addr[1], "udp", partial(self._reply, addr=addr), arrived)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send now or not at all: UDP is unreliable anyway, and a full
        4 MB send buffer means the peer is not reading.  An address this
        socket cannot use at all raises (#12.3: the NOTIFY sender fails
        that one transaction)."""
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            log.debug("udp send buffer full", extra={"peer": f"{addr[0]}:{addr[1]}"})

    def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        """A response to where a request came from: nothing to fail."""
        try:
            self.sendto(data, addr)
        except OSError as e:
            log.debug("udp error", extra={"error": str(e)})

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return  # closed already
        try:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        except RuntimeError:
            pass
        self.sock.close()


class TcpConnection(Forwarding):
    """One stream connection: SIP over TCP or TLS framed here, or (``inner``
    given) the byte stream of a WebSocket handed to aiohttp's HTTP handler,
    which gives its messages back through :meth:`message_done`."""

    def __init__(
        self,
        owner: "Transports",
        kind: str = "tcp",
        tls: Callable[[], ssl.SSLContext] | None = None,
        inner: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        self.owner = owner
        self.kind = kind
        self._tls = tls
        self._inner_factory = inner
        #: aiohttp's protocol (WebSocket), once TLS (if any) is up.
        self.inner: asyncio.Protocol | None = None
        #: The TCP transport under TLS (its buffer counts too).
        self.raw: asyncio.Transport | None = None
        self.framer = StreamFramer(owner.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.last_active = 0.0
        #: When the message now arriving began (None: between messages).
        self.message_started: float | None = None
        #: Bytes in the write buffer when last looked at, and since when
        #: they have been over the bound (None: not over it).
        self.queued = 0
        self.over_since: float | None = None
        #: NOTIFY transactions in flight on this connection.
        self.branches: set[str] = set()
        #: Subscriptions whose flow this is (TLS, WS, WSS), by id.
        self.flows: dict[str, Subscription] = {}
        #: Closed by the node (counted then, under its reason).
        self.dropped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.raw is not None:  # the TLS handshake is done: its transport
            self._open(transport)  # type: ignore[arg-type]
            return
        transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport instance
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.last_active = asyncio.get_running_loop().time()
        refused = self.owner.register(self)
        if refused is not None:
            self.owner.metrics.count("sip_tcp_closed", refused)
            transport.abort()
            return
        if self._tls is None and self._inner_factory is None:
            return
        # The handshake and the upgrade are timed as a message's arrival.
        self.message_started = self.last_active
        if self._tls is None:
            self._open(transport)
            return
        # TLS goes under us at once (not from a task: see accept_tls); it
        # calls connection_made again with its transport once the handshake
        # is done.
        self.raw = transport
        accept_tls(transport, self, self._tls(), self.owner.message_timeout or SWEEP, self._handshake_done)

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        e = None if waiter.cancelled() else waiter.exception()
        if self.transport is not self.raw:
            return  # done, and connection_made came with the TLS transport
        # Failed, or the peer went away before it ended (no error then).
        if not self.dropped:
            self.owner.metrics.count("sip_tcp_closed", "tls-handshake")
        log.debug("tls handshake failed", extra={"peer": f"{self.peer[0]}:{self.peer[1]}", "error": repr(e)})
        if self.raw is not None:
            self.raw.abort()
        self.owner.unregister(self)  # connection_lost does not reach us before the handshake ends

    def _open(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self._inner_factory is None:
            self.message_started = None
            return
        self.owner.by_transport[transport] = self
        self.inner = self._inner_factory()
        self.inner.connection_made(transport)

    def message_done(self) -> None:
        """A whole WebSocket message (or the upgrade) has arrived."""
        self.message_started = None

    def data_received(self, data: bytes) -> None:
        now = self.last_active = asyncio.get_running_loop().time()
        if self.inner is not None:
            if self.message_started is None:
                self.message_started = now
            self.inner.data_received(data)
            return
        try:
            messages = self.framer.feed(data)
        except ParseError:
            # A stream that cannot be framed cannot be resynchronised.
            self.owner.drop(self, "unframeable")
            return
        if not self.framer.partial:
            self.message_started = None
        elif messages or self.message_started is None:
            self.message_started = now
        for msg in messages:
            self.owner.receive(msg, self.peer[0], self.peer[1], self.kind, self.write, None)

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if self.inner is not None:
                data = text_frame(data)  # RFC 7118: one SIP message per WebSocket message
            t.write(data)
            n = self.buffered()
            if n or self.queued:
                self.owner.queued(self, n)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the peer (TLS: both layers)."""
        t = self.transport
        n = t.get_write_buffer_size() if t is not None else 0
        if self.raw is not None and self.raw is not t and not self.raw.is_closing():
            n += self.raw.get_write_buffer_size()
        return n

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.unregister(self)
        if self.inner is not None:
            self.owner.by_transport.pop(self.transport, None)  # type: ignore[arg-type]
            self.inner.connection_lost(exc)
        self.transport = None


class Transports:
    """Listeners plus the NOTIFY sender (see module docstring)."""

    def __init__(
        self,
        receive: Receive,
        *,
        advertised_host: str,
        t1: float,
        t2: float,
        udp_max_size: int,
        max_size: int,
        max_tcp: int,
        tcp_idle: float,
        max_tcp_per_source: int | None = None,
        message_timeout: float | None = None,
        max_queued: int | None = None,
        write_timeout: float = SWEEP,
        max_queued_total: int | None = None,
        targets: Targets | None = None,
        metrics: Counting | None = None,
        on_flow_closed: Callable[[list[Subscription]], None] | None = None,
    ) -> None:
        self.receive = receive
        self.host = advertised_host
        self.port = 0
        self.udp: UdpSocket | None = None
        self.tcp_server: asyncio.base_events.Server | None = None
        self.client = ClientTransactions(t1, t2)
        self.udp_max_size = udp_max_size
        self.max_size = max_size
        self.max_tcp = max_tcp
        self.tcp_idle = tcp_idle
        self.max_tcp_per_source = max_tcp_per_source
        self.message_timeout = message_timeout
        self.max_queued = max_queued
        self.write_timeout = write_timeout
        self.max_queued_total = max_queued_total
        #: Anti-reflection (#12.10); without one, every address is proven.
        self.targets = targets or Targets(None, 1, 1)
        self.metrics: Counting = metrics or _NoMetrics()
        self.connections: dict[tuple[str, int], TcpConnection] = {}
        #: WebSocket connections by the transport aiohttp's handler sees.
        self.by_transport: dict[asyncio.BaseTransport, TcpConnection] = {}
        #: Listening port of each transport ("udp", "tcp", "tls", "ws", "wss").
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.base_events.Server] = []
        #: Called with the subscriptions of a TLS or WebSocket connection that closed.
        self.on_flow_closed = on_flow_closed
        self._per_source: dict[str, int] = {}
        #: Bytes in every connection's write buffer (as last looked at).
        self.queued_total = 0
        self._family = socket.AF_INET
        self._dual_stack = False
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # when _timer fires
        self._sweeper: asyncio.TimerHandle | None = None
        self._pending_connects = Tasks("tcp-connect")
        self._destinations: dict[tuple[str, str, str, str], tuple[str, str, int]] = {}

    async def start(self, host: str, port: int) -> int:
        """Bind UDP and TCP on the same port (port 0: pick one free for both)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(20):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            bound = sock.getsockname()[1]
            try:
                self.tcp_server = await loop.create_server(
                    lambda: TcpConnection(self), host, bound, reuse_address=True, backlog=1024
                )
            except OSError:
                sock.close()
                if port:
                    raise
                continue
            self.udp = UdpSocket(sock, self.receive)
            self.port = self.ports["udp"] = self.ports["tcp"] = bound
            self._family = sock.family
            if sock.family == socket.AF_INET6:
                # Bound to :: without IPV6_V6ONLY: IPv4 too, as ::ffff:a.b.c.d.
                self._dual_stack = sock.getsockname()[0] == "::" and not sock.getsockopt(
                    socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
                )
            self._sweeper = loop.call_later(self._sweep_period(), self._sweep)
            return bound
        raise OSError("no port free for both UDP and TCP")

    async def listen(
        self,
        kind: str,
        host: str,
        port: int,
        tls: Callable[[], ssl.SSLContext] | None = None,
        inner: Callable[[], asyncio.Protocol] | None = None,
    ) -> int:
        """Another stream listener: ``tls`` (SIP over TLS), ``ws`` or ``wss``
        (``inner``: aiohttp's protocol for the HTTP upgrade)."""
        server = await asyncio.get_running_loop().create_server(
            lambda: TcpConnection(self, kind, tls, inner), host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        self.ports[kind] = bound = server.sockets[0].getsockname()[1]
        return bound

    def contact(self, transport: str) -> str:
        """Our Contact for a dialog over ``transport``: sips: over TLS, and
        RFC 7118 §5's ``transport=ws`` for WS and WSS alike."""
        scheme = "sips" if transport in ("tls", "wss") else "sip"
        suffix = {"tcp": ";transport=tcp", "ws": ";transport=ws", "wss": ";transport=ws"}.get(transport, "")
        return f"{scheme}:{self.host}:{self.ports.get(transport, self.port)}{suffix}"

    # -- TCP connection registry --------------------------------------------

    def register(self, conn: TcpConnection) -> str | None:
        """Take a new connection, or say why not (a ``sip_tcp_closed`` reason)."""
        if len(self.connections) >= self.max_tcp:
            return "limit"
        ip = conn.peer[0]
        held = self._per_source.get(ip, 0)
        if self.max_tcp_per_source is not None and held >= self.max_tcp_per_source:
            return "per-source"
        self._per_source[ip] = held + 1
        self.connections[conn.peer] = conn
        return None

    def unregister(self, conn: TcpConnection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
            ip = conn.peer[0]
            held = self._per_source[ip] - 1
            if held:
                self._per_source[ip] = held
            else:
                del self._per_source[ip]
            self.queued_total -= conn.queued
            conn.queued = 0
            if conn.kind in FLOWS:
                self._flow_closed(conn)

    def _flow_closed(self, conn: TcpConnection) -> None:
        """A watcher's flow is gone: its NOTIFYs in flight fail now as on
        Timer F, and its other subscriptions end (Kamailio #4118: watchers
        of a closed WebSocket stayed forever)."""
        self._fail_branches(conn)
        subs, conn.flows = list(conn.flows.values()), {}
        if subs:
            self.metrics.count("sip_flows_closed", conn.kind, len(subs))
            if self.on_flow_closed is not None:
                self.on_flow_closed(subs)

    def drop(self, conn: TcpConnection, reason: str) -> None:
        """Close ``conn`` now, discarding what it has not read (a peer that
        does not read would hold a graceful close open forever)."""
        if conn.transport is not None and not conn.transport.is_closing():
            self.metrics.count("sip_tcp_closed", reason)
            conn.dropped = True
            conn.transport.abort()

    def queued(self, conn: TcpConnection, n: int) -> None:
        """``conn`` has ``n`` bytes in its write buffer now (#12.5)."""
        self.queued_total += n - conn.queued
        conn.queued = n
        if self._stuck(conn, asyncio.get_running_loop().time()):
            self._overflow(conn, "write-queue")
        elif self.max_queued_total is not None and self.queued_total > self.max_queued_total:
            # Sizes seen earlier may have drained since: look again, then
            # close the connection holding most.
            self._recount()
            if self.queued_total > self.max_queued_total:
                self._overflow(max(self.connections.values(), key=lambda c: c.queued), "write-queue-total")

    def _stuck(self, conn: TcpConnection, now: float) -> bool:
        """Has ``conn`` kept over ``max_queued`` bytes unread for longer
        than ``write_timeout``?  (A burst that drains is no attack.)"""
        if self.max_queued is None or conn.queued <= self.max_queued:
            conn.over_since = None
            return False
        if conn.over_since is None:
            conn.over_since = now
        return now - conn.over_since > self.write_timeout

    def _recount(self) -> None:
        total = 0
        for c in self.connections.values():
            if c.transport is not None:
                c.queued = c.buffered()
            total += c.queued
        self.queued_total = total

    def _overflow(self, conn: TcpConnection, reason: str) -> None:
        """Close a connection that does not read what we send, and fail its
        NOTIFYs as Timer F would (S26: their subscriptions are removed),
        instead of holding them and their bytes until then."""
        self.drop(conn, reason)
        self.unregister(conn)
        self._fail_branches(conn)

    def _fail_branches(self, conn: TcpConnection) -> None:
        branches, conn.branches = conn.branches, set()
        for branch in branches:
            txn = self.client.abort(branch)
            if txn is not None:
                txn.context(408)

    def _sweep_period(self) -> float:
        return min(SWEEP, self.tcp_idle / 2, (self.message_timeout or SWEEP) / 2, self.write_timeout / 2)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._recount()
        for conn in list(self.connections.values()):
            started = conn.message_started
            if started is not None and self.message_timeout is not None and now - started > self.message_timeout:
                self.drop(conn, "message-timeout")
            elif now - conn.last_active > self.tcp_idle and not conn.flows:
                # A watcher's flow stays while it carries subscriptions (their
                # expiry bounds it): closing it would end them.  TCP ones are
                # reopened by the next NOTIFY.
                self.drop(conn, "idle")
            elif self._stuck(conn, now):
                self._overflow(conn, "write-queue")
        self._sweeper = loop.call_later(self._sweep_period(), self._sweep)

    # -- Sender ---------------------------------------------------------------

    def local_contact(self, sub: Subscription) -> tuple[str, str]:
        port = self.ports.get(sub.transport, self.port)
        return f"SIP/2.0/{sub.transport.upper()} {self.host}:{port}", self.contact(sub.transport)

    def reachable(self, sub: Subscription) -> bool:
        """False when a NOTIFY to ``sub`` could not be sent at all: a UDP
        destination of an address family our socket does not speak."""
        return bool(self.destination(sub)[1])

    def destination(self, sub: Subscription) -> tuple[str, str, int]:
        """(transport, host, port) for an in-dialog request to ``sub``;
        host "" when unreachable (see :meth:`reachable`).

        Cached by the fields it derives from: fan-out asks it for every
        watcher of a presentity, and the answer rarely changes.
        """
        key = (sub.contact, sub.routes, sub.source, sub.transport)
        dest = self._destinations.get(key)
        if dest is None:
            if len(self._destinations) >= 100_000:
                self._destinations.clear()
            dest = self._destinations[key] = self._resolve(sub)
        return dest

    def _resolve(self, sub: Subscription) -> tuple[str, str, int]:
        if sub.transport in FLOWS:
            return (sub.transport, *_split(sub.source))
        target = sub.contact
        if sub.routes:
            try:
                target = parse_name_addr(split_commas(sub.routes)[0]).uri
            except ParseError:
                pass
        transport = sub.transport
        try:
            uri = parse_uri(target)
            host, port = uri.host.strip("[]"), uri.port or 5060
            t = uri.params.get("transport")
            if t in ("udp", "tcp"):
                transport = t
        except ParseError:
            host, port = "", 0
        if not host or not _is_ip(host):
            src_host, _, src_port = sub.source.rpartition(":")
            host, port = src_host.strip("[]"), int(src_port)
        if transport == "udp":
            host = self._udp_host(host)
        return transport, host, port

    def _udp_host(self, host: str) -> str:
        """``host`` as our UDP socket can send to it, "" if it cannot: an
        IPv4-mapped IPv6 address is IPv4; an IPv4 one is mapped for a
        dual-stack IPv6 socket; otherwise the families must match."""
        if ":" in host:
            try:
                mapped = ipaddress.IPv6Address(host).ipv4_mapped
            except ValueError:
                return ""
            if mapped is not None and self._family == socket.AF_INET:
                return str(mapped)
            return host if self._family == socket.AF_INET6 else ""
        if self._family == socket.AF_INET6:
            return f"::ffff:{host}" if self._dual_stack else ""
        return host

    def send_request(self, data: bytes, sub: Subscription, branch: str, on_done: OnDone) -> None:
        if sub.transport in FLOWS:
            self._send_flow(data, sub, branch, on_done)
            return
        transport, host, port = self.destination(sub)
        if transport == "udp" and len(data) > self.udp_max_size:
            transport = "tcp"  # S08: large NOTIFYs need congestion control
            fallback_udp = True
        else:
            fallback_udp = False
        if transport == "tcp":
            self._pending_connects.spawn(self._send_tcp(data, sub, branch, on_done, host, port, fallback_udp))
            return
        self._send_udp(data, branch, on_done, host, port)

    def _send_udp(self, data: bytes, branch: str, on_done: OnDone, host: str, port: int) -> None:
        """A first transmission over UDP, if the destination may have it
        now (:mod:`.targets`); the others wait or fail there."""
        loop = asyncio.get_running_loop()
        if not host:
            self.metrics.count("sip_send_errors", "udp")
            loop.call_soon(on_done, 503)
            return
        key = (host, port)
        verdict = self.targets.admit(key, branch, len(data))
        if verdict == SEND:
            self._start_udp(data, branch, on_done, host, port)
        elif verdict == WAIT:
            self.targets.queue(key, branch, len(data), (data, branch, on_done))
            self.metrics.count("sip_notify_withheld", "unanswered")
        else:
            self.metrics.count("sip_notify_withheld", "targets-full")
            loop.call_soon(on_done, 503)

    def _start_udp(self, data: bytes, branch: str, on_done: OnDone, host: str, port: int) -> None:
        self.client.start(branch, data, ("udp", host, port), False, on_done, asyncio.get_running_loop().time())
        if self._udp_send(data, host, port):
            self._arm()
        else:
            self._failed(branch, 503)

    def _udp_send(self, data: bytes, host: str, port: int) -> bool:
        """False when the operating system refused the send outright."""
        if self.udp is not None:
            try:
                self.udp.sendto(data, (host, port))
            except SEND_ERRORS as e:
                self.metrics.count("sip_send_errors", "udp")
                log.debug("udp send failed", extra={"dest": f"{host}:{port}", "error": str(e)})
                return False
        return True

    def _failed(self, branch: str, code: int) -> None:
        """End a UDP transaction without a response (Timer F: 408; could not
        be sent: 503), and the NOTIFYs queued behind it the same way."""
        txn = self.client.abort(branch)
        if txn is None:
            return
        self._ended(txn, code)

    def _ended(self, txn: Any, code: int) -> None:
        _, host, port = txn.dest
        txn.context(code)
        for _data, _branch, on_done in self.targets.failed((host, port), txn.branch):
            on_done(code)

    async def _send_tcp(
        self,
        data: bytes,
        sub: Subscription,
        branch: str,
        on_done: OnDone,
        host: str,
        port: int,
        fallback_udp: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        conn = self.connections.get(_split(sub.source)) if sub.transport == "tcp" else None
        if conn is None:
            conn = self.connections.get((host, port))
        if conn is not None and conn.kind != "tcp":
            conn = None  # a watcher's TLS or WebSocket flow is no TCP destination
        if conn is None:
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(lambda: TcpConnection(self), host, port), 3.0)
                conn = proto  # type: ignore[assignment]
            except SEND_ERRORS + (asyncio.TimeoutError,):
                conn = None
            if conn is None or conn.transport is None or conn.transport.is_closing():  # refused by register()
                if fallback_udp:
                    self._send_udp(data, branch, on_done, self._udp_host(host), port)
                else:
                    on_done(503)
                return
        assert conn is not None
        if sub.transport != "tcp":
            # RFC 3261 §18.1.1: the top Via names the transport actually used.
            data = data.replace(b"\r\nVia: SIP/2.0/UDP ", b"\r\nVia: SIP/2.0/TCP ", 1)
        self.client.start(branch, data, ("tcp", conn), True, on_done, loop.time())
        conn.branches.add(branch)
        conn.write(data)
        self._arm()

    def _send_flow(self, data: bytes, sub: Subscription, branch: str, on_done: OnDone) -> None:
        """Over the connection the SUBSCRIBE came on, or not at all: 408,
        so the subscription ends as on Timer F (S26)."""
        loop = asyncio.get_running_loop()
        conn = self.connections.get(_split(sub.source))
        if conn is None or conn.kind != sub.transport or conn.transport is None or conn.transport.is_closing():
            self.metrics.count("sip_flows_closed", sub.transport)
            loop.call_soon(on_done, 408)
            return
        if _TERMINATED in data:
            conn.flows.pop(sub.id, None)
        else:
            conn.flows[sub.id] = sub
        self.client.start(branch, data, (sub.transport, conn), True, on_done, loop.time())
        conn.branches.add(branch)
        conn.write(data)
        self._arm()

    def on_response(self, code: int, branch: str, source: str) -> None:
        """A response from the network (from IP ``source``): complete its
        NOTIFY transaction."""
        txn = self.client.on_response(branch, code, asyncio.get_running_loop().time())
        if txn is None:
            return
        if txn.reliable:
            txn.dest[1].branches.discard(branch)
            txn.context(code)
            return
        _, host, port = txn.dest
        txn.context(code)
        send, fail = self.targets.answered((host, port), branch, source)
        for data, b, on_done in send:
            self._start_udp(data, b, on_done, host, port)
        for _data, _b, on_done in fail:
            on_done(408)

    # -- timers -----------------------------------------------------------------

    def _arm(self) -> None:
        nxt = self.client.next_deadline()
        if nxt is None:
            return
        if self._timer is not None:
            # Our own record of the deadline: for one less than 0.5 ms away
            # uvloop's call_at returns a plain Handle, which has no when().
            if self._timer_at <= nxt:
                return
            self._timer.cancel()
        self._timer_at = nxt
        self._timer = asyncio.get_running_loop().call_at(nxt, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        try:
            for what, txn in self.client.due(loop.time()):
                if what == RETRANSMIT:
                    _, host, port = txn.dest
                    if not self.targets.may_resend((host, port), len(txn.data)):
                        self.metrics.count("sip_notify_withheld", "budget")
                    elif not self._udp_send(txn.data, host, port):
                        self._failed(txn.branch, 503)
                elif txn.reliable:
                    txn.dest[1].branches.discard(txn.branch)
                    txn.context(408)
                else:
                    self._ended(txn, 408)
        finally:
            self._arm()

    async def close(self) -> None:
        # Subscriptions of flows closed now live on with a shared database
        # (another node's NOTIFY ends them); storage closes next.
        self.on_flow_closed = None
        for h in (self._timer, self._sweeper):
            if h is not None:
                h.cancel()
        if self.udp is not None:
            self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                if conn.transport.get_write_buffer_size():
                    conn.transport.abort()  # a peer that does not read would hold close() open
                else:
                    conn.transport.close()
        await self._pending_connects.cancel()
        if self.tcp_server is not None:
            await self.tcp_server.wait_closed()
        for server in self._servers:
            await server.wait_closed()


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port) if port.isdigit() else 0
