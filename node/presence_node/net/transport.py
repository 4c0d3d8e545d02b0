"""The only place with sockets: UDP and TCP listeners, NOTIFY sending.

:class:`Transports` is the notifier's :class:`~..service.notify.Sender`.
It owns the client transaction table and arms one loop timer for its next
deadline (retransmission or Timer F), instead of a timer per NOTIFY.
Destinations follow RFC 3263 loosely: the first Route, else the Contact;
a host name we would have to resolve is replaced by the address the
SUBSCRIBE came from (the NAT case RFC 3581 exists for).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from functools import partial
from typing import Callable, Optional

from ..sip.errors import ParseError
from ..sip.headers import parse_name_addr, parse_uri
from ..sip.message import split_commas
from ..sip.parser import StreamFramer
from ..sip.transaction import RETRANSMIT, ClientTransactions
from ..storage import Subscription

log = logging.getLogger(__name__)

#: (data, source host, source port, transport, send, when the kernel received
#: it as time.time() or None when unknown)
Receive = Callable[[bytes, str, int, str, Callable[[bytes], None], Optional[float]], None]
SOCKET_BUFFER = 4 * 1024 * 1024


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
            self.receive(data, addr[0], addr[1], "udp", partial(self.sendto, addr=addr), arrived)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send now or not at all: UDP is unreliable anyway, and a full
        4 MB send buffer means the peer is not reading."""
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            log.debug("udp send buffer full", extra={"peer": f"{addr[0]}:{addr[1]}"})
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


class TcpConnection(asyncio.Protocol):
    def __init__(self, owner: "Transports") -> None:
        self.owner = owner
        self.framer = StreamFramer(owner.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer = ("", 0)
        self.last_active = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.last_active = asyncio.get_running_loop().time()
        if not self.owner.register(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        try:
            messages = self.framer.feed(data)
        except ParseError:
            # A stream that cannot be framed cannot be resynchronised.
            assert self.transport is not None
            self.transport.close()
            return
        for msg in messages:
            self.owner.receive(msg, self.peer[0], self.peer[1], "tcp", self.write, None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.unregister(self)


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
        self.connections: dict[tuple[str, int], TcpConnection] = {}
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # when _timer fires
        self._sweeper: asyncio.TimerHandle | None = None
        self._pending_connects: set[asyncio.Task[None]] = set()
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
            self.port = bound
            self._sweeper = loop.call_later(5.0, self._sweep_idle)
            return bound
        raise OSError("no port free for both UDP and TCP")

    def contact(self, transport: str) -> str:
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"sip:{self.host}:{self.port}{suffix}"

    # -- TCP connection registry --------------------------------------------

    def register(self, conn: TcpConnection) -> bool:
        if len(self.connections) >= self.max_tcp:
            return False
        self.connections[conn.peer] = conn
        return True

    def unregister(self, conn: TcpConnection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]

    def _sweep_idle(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self.connections.values()):
            if now - conn.last_active > self.tcp_idle and conn.transport is not None:
                conn.transport.close()
        self._sweeper = loop.call_later(5.0, self._sweep_idle)

    # -- Sender ---------------------------------------------------------------

    def local_contact(self, sub: Subscription) -> tuple[str, str]:
        return f"SIP/2.0/{sub.transport.upper()} {self.host}:{self.port}", self.contact(sub.transport)

    def destination(self, sub: Subscription) -> tuple[str, str, int]:
        """(transport, host, port) for an in-dialog request to ``sub``.

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
            host, port = src_host, int(src_port)
        return transport, host, port

    def send_request(self, data: bytes, sub: Subscription, branch: str, on_done: Callable[[int], None]) -> None:
        transport, host, port = self.destination(sub)
        loop = asyncio.get_running_loop()
        if transport == "udp" and len(data) > self.udp_max_size:
            transport = "tcp"  # S08: large NOTIFYs need congestion control
            fallback_udp = True
        else:
            fallback_udp = False
        if transport == "tcp":
            self._spawn(self._send_tcp(data, sub, branch, on_done, host, port, fallback_udp))
            return
        self.client.start(branch, data, ("udp", host, port), False, on_done, loop.time())
        self._udp_send(data, host, port)
        self._arm()

    def _udp_send(self, data: bytes, host: str, port: int) -> None:
        if self.udp is not None:
            self.udp.sendto(data, (host, port))

    async def _send_tcp(
        self,
        data: bytes,
        sub: Subscription,
        branch: str,
        on_done: Callable[[int], None],
        host: str,
        port: int,
        fallback_udp: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        conn = self.connections.get(_split(sub.source)) if sub.transport == "tcp" else None
        if conn is None:
            conn = self.connections.get((host, port))
        if conn is None:
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(lambda: TcpConnection(self), host, port), 3.0)
                conn = proto  # type: ignore[assignment]
            except (OSError, asyncio.TimeoutError):
                if fallback_udp:
                    self.client.start(branch, data, ("udp", host, port), False, on_done, loop.time())
                    self._udp_send(data, host, port)
                    self._arm()
                else:
                    on_done(503)
                return
        assert conn is not None
        if sub.transport != "tcp":
            # RFC 3261 §18.1.1: the top Via names the transport actually used.
            data = data.replace(b"\r\nVia: SIP/2.0/UDP ", b"\r\nVia: SIP/2.0/TCP ", 1)
        self.client.start(branch, data, ("tcp", host, port), True, on_done, loop.time())
        conn.write(data)
        self._arm()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(coro)
        self._pending_connects.add(task)
        task.add_done_callback(self._pending_connects.discard)

    def on_response(self, code: int, branch: str) -> None:
        """A response from the network: complete its NOTIFY transaction."""
        txn = self.client.on_response(branch, code, asyncio.get_running_loop().time())
        if txn is not None:
            txn.context(code)

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
        for what, txn in self.client.due(loop.time()):
            if what == RETRANSMIT:
                _, host, port = txn.dest
                self._udp_send(txn.data, host, port)
            else:
                txn.context(408)
        self._arm()

    async def close(self) -> None:
        for h in (self._timer, self._sweeper):
            if h is not None:
                h.cancel()
        if self.udp is not None:
            self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self._pending_connects):
            task.cancel()
        if self.tcp_server is not None:
            await self.tcp_server.wait_closed()


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port) if port.isdigit() else 0
