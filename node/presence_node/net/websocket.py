"""SIP over WebSocket, plain (WS) and over TLS (WSS): RFC 7118 (#15.6).

aiohttp serves the HTTP upgrade on ``transports.ws_path``; the connection
under it is a :class:`~.transport.TcpConnection`, counted and timed from
accept like any TCP or TLS connection.  The client must offer the ``sip``
subprotocol (RFC 7118 §4; 400 otherwise).  Each WebSocket message, text
or binary, is one SIP message (§5), handed to the dispatcher with the
connection as its reply path; Content-Length may be absent (the frame
delimits the message).  Responses and NOTIFYs go back over the same
connection, written as whole frames straight onto the transport (no
coroutine per NOTIFY), so the write-queue bounds see them as they see TCP.

Pings are answered here rather than by aiohttp (``autoping=False``): every
frame, a ping included, then marks the end of a message for the
``message_timeout`` check, which a frame trickled byte by byte fails.
"""

from __future__ import annotations

import ssl
import struct
from typing import TYPE_CHECKING, Callable

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .transport import Transports

#: Bounds of the HTTP upgrade request (aiohttp's defaults allow 128
#: headers of 8 KiB before the handler sees it); browsers send under 2 KiB.
HTTP_LIMITS = {"max_line_size": 4096, "max_field_size": 4096, "max_headers": 48}
SUBPROTOCOL = "sip"


def text_frame(data: bytes) -> bytes:
    """``data`` as one unmasked server frame (RFC 6455 §5.2): text when it
    is UTF-8, as every SIP message we write is, else binary."""
    try:
        data.decode("utf-8")
        opcode = 0x81
    except UnicodeDecodeError:
        opcode = 0x82
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", opcode, 126, n)
    else:
        header = struct.pack("!BBQ", opcode, 127, n)
    return header + data


class WebSocketListener:
    """One WS or WSS listener (``kind``), its connections in ``transports``."""

    def __init__(self, transports: "Transports", kind: str, path: str) -> None:
        self.transports = transports
        self.kind = kind
        self.path = path
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, tls: Callable[[], ssl.SSLContext] | None) -> int:
        app = web.Application(client_max_size=1024)
        app.router.add_get(self.path, self._accept)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, **HTTP_LIMITS)
        await self._runner.setup()
        assert self._runner.server is not None
        return await self.transports.listen(self.kind, host, port, tls, self._runner.server)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        t = self.transports
        conn = t.by_transport.get(request.transport) if request.transport is not None else None
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=t.max_size, autoping=False)
        ready = ws.can_prepare(request)
        if conn is None or not ready.ok:
            return web.Response(status=426, text="a WebSocket upgrade is expected here\n")
        if ready.protocol != SUBPROTOCOL:
            return web.Response(status=400, text="the 'sip' WebSocket subprotocol is required (RFC 7118)\n")
        await ws.prepare(request)
        conn.message_done()
        host, port = conn.peer
        while True:
            msg = await ws.receive()
            conn.message_done()
            if msg.type == WSMsgType.TEXT:
                t.receive(msg.data.encode("utf-8"), host, port, self.kind, conn.write, None)
            elif msg.type == WSMsgType.BINARY:
                t.receive(msg.data, host, port, self.kind, conn.write, None)
            elif msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                continue
            else:  # closing, closed, or a frame too large or malformed
                if msg.type == WSMsgType.ERROR:
                    t.drop(conn, "unframeable")
                break
        return ws
