"""The cluster channel's gate (federation/gate.py) with TLS, under uvloop
(the presence-node process's event loop) and plain asyncio (the in-process
tests'): uvloop starts reading right after connection_made, so TLS must be
under the connection by then, and the gate's bounds (per-source cap,
deadline from TCP accept) must hold for connections that never finish
the handshake, whose connection_lost the handler never sees."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter

import pytest
import uvloop

from presence_node.config import Federation
from presence_node.federation.gate import Gate
from presence_node.federation.tls import TlsFiles
from test_federation import make_pki

HELLO = b"hello"


class Counts:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def count(self, name: str, label: str, n: int = 1) -> None:
        self.counts[(name, label)] += n


class Echo(asyncio.Protocol):
    """Stands for aiohttp's handler: echoes, and a hello authenticates."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data == HELLO:
            self.gate.authenticate(self.transport)
        self.transport.write(data)  # type: ignore[union-attr]


async def closed(r: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        return await asyncio.wait_for(r.read(100), 5.0) == b""
    return True


async def until(check, what: str) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def scenario(pki: dict[str, str]) -> None:
    files = TlsFiles(*(pki[k] for k in ("tls_cert_file", "tls_key_file", "tls_ca_file")))  # type: ignore[arg-type]
    config = Federation(auth_timeout=1.0, max_unauthenticated=4, max_unauthenticated_per_source=2)
    counts = Counts()
    gate: Gate = Gate(lambda: Echo(gate), config, files.server, counts)
    server = await asyncio.get_running_loop().create_server(gate.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # A peer speaking TLS at once reaches the handler; its hello
        # stops the deadline.
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=files.client())
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), 5.0) == b"ping"
        w.write(HELLO)
        assert await asyncio.wait_for(r.readexactly(5), 5.0) == HELLO
        assert (gate.unauthenticated, gate.authenticated) == (0, 1)

        # Plain bytes fail the handshake: closed, counted, released.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"GET /cluster HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await closed(r2)
        await until(lambda: gate.unauthenticated == 0, "the failed handshake released")
        assert counts.counts[("cluster_connections_closed", "tls")] == 1

        # Silent connections: two from one address pending at most, the
        # third refused at once; the two cut auth_timeout after accept.
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await closed(idle[2][0])
        assert counts.counts[("cluster_connections_refused", "per-source")] == 1
        assert gate.unauthenticated == 2
        assert all([await closed(ir) for ir, _ in idle[:2]])
        await until(lambda: gate.unauthenticated == 0, "the silent connections released")
        assert counts.counts[("cluster_connections_closed", "auth-timeout")] == 2
        assert counts.counts[("cluster_connections_closed", "tls")] == 1  # a cut is not a TLS failure

        # The authenticated peer outlived the deadline.
        w.write(b"still")
        assert await asyncio.wait_for(r.readexactly(5), 5.0) == b"still"
        for _, iw in [(r2, w2), *idle, (r, w)]:
            iw.close()
        await until(lambda: gate.authenticated == 0, "the authenticated connection released")
    finally:
        gate.close()
        server.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_gate_puts_tls_under_a_connection_at_accept_and_keeps_its_bounds(loop, tmp_path):
    pki = make_pki(tmp_path, "cluster")
    ev = uvloop.new_event_loop() if loop == "uvloop" else asyncio.new_event_loop()
    try:
        ev.run_until_complete(asyncio.wait_for(scenario(pki), 30.0))
    finally:
        ev.close()
