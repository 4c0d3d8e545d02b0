"""SIP over TLS and WebSocket (#15.5, #15.6): the listeners, NOTIFYs back
over the watcher's own connection, watchers of a closed connection ended,
the certificate reloaded from its files, and the #12 bounds on these
connections.  Certificates are made at test time with the openssl CLI."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bodies import pidf
from sipclient import SipClient

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("certs")
    return {name: make_cert(d, name) for name in ("server", "rotated", "stranger")}


@pytest.fixture
def served(tmp_path, certs):
    """Certificate files the node serves (copies: a test may rotate them)."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(certs["server"][0], cert)
    shutil.copy(certs["server"][1], key)
    return cert, key


def transports(served, **kw):
    cert, key = served
    return {
        "tls": "127.0.0.1:0", "ws": "127.0.0.1:0", "wss": "127.0.0.1:0", "ws_path": "/sip",
        "tls_cert_file": str(cert), "tls_key_file": str(key), **kw,
    }


async def client(node, kind: str, user: str, open_clients, tls=None) -> SipClient:
    port = node.transports.ports[kind]
    url = f"{kind}://127.0.0.1:{port}/sip" if kind in ("ws", "wss") else None
    c = await SipClient(("127.0.0.1", port), kind, user, tls=tls, ws_url=url).open()
    open_clients.append(c)
    return c


async def metric(node, name: str) -> float:
    for line in (await node.metrics_text()).decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_for(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["tls", "ws", "wss"])
async def test_subscribe_and_publish_notify_back_over_the_watchers_connection(
    make_node, open_clients, served, certs, kind
):
    node = await make_node(transports=transports(served))
    tls = trusting(certs["server"][0]) if kind in ("tls", "wss") else None
    alice = await client(node, kind, "alice", open_clients, tls)
    bob = await client(node, kind, "bob", open_clients, tls)
    resp, dialog = await alice.subscribe("sip:bob@example.com")
    assert resp.code == 200
    contact = resp.headers.get("contact") or ""
    port = node.transports.ports[kind]
    assert f":{port}" in contact
    if kind == "tls":
        assert contact.startswith("<sips:")
    else:
        assert contact.endswith(";transport=ws>") and contact.startswith("<sips:" if kind == "wss" else "<sip:")
    first = (await alice.dialog_notifies(dialog, 1))[0]
    assert (first.headers.get("via") or "").startswith(f"SIP/2.0/{kind.upper()} ")
    assert (await bob.publish(pidf("bob", basic="open"))).code == 200
    notifies = await alice.dialog_notifies(dialog, 2)
    assert b"<basic>open</basic>" in notifies[-1].body


async def test_tls_client_refuses_a_certificate_it_does_not_trust(make_node, open_clients, served, certs):
    node = await make_node(transports=transports(served))
    with pytest.raises(ssl.SSLCertVerificationError):
        await client(node, "tls", "alice", open_clients, trusting(certs["stranger"][0]))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await client(node, "wss", "alice", open_clients, trusting(certs["stranger"][0]))
    good = await client(node, "tls", "carol", open_clients, trusting(certs["server"][0]))
    resp, _ = await good.subscribe("sip:bob@example.com")
    assert resp.code == 200


async def test_tls_certificate_reloaded_when_its_files_change(make_node, open_clients, served, certs):
    node = await make_node(transports=transports(served))
    before = await client(node, "tls", "alice", open_clients, trusting(certs["server"][0]))
    # cert-manager rotates in place: the same paths, new contents.
    shutil.copy(certs["rotated"][0], served[0])
    shutil.copy(certs["rotated"][1], served[1])
    after = await client(node, "tls", "bob", open_clients, trusting(certs["rotated"][0]))
    assert (await after.subscribe("sip:carol@example.com"))[0].code == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        await client(node, "tls", "dave", open_clients, trusting(certs["server"][0]))
    # The connection opened before keeps its session.
    assert (await before.subscribe("sip:carol@example.com"))[0].code == 200
    assert await metric(node, 'sip_tls_reloads_total{result="ok"}') == 1


async def test_tls_half_written_rotation_keeps_the_loaded_certificate(make_node, open_clients, served, certs):
    node = await make_node(transports=transports(served))
    shutil.copy(certs["rotated"][0], served[0])  # the key not yet written
    c = await client(node, "tls", "alice", open_clients, trusting(certs["server"][0]))
    assert (await c.subscribe("sip:bob@example.com"))[0].code == 200
    assert await metric(node, 'sip_tls_reloads_total{result="failed"}') == 1


@pytest.mark.parametrize("kind", ["ws", "wss", "tls"])
async def test_watchers_of_a_closed_connection_are_terminated(make_node, open_clients, served, certs, kind):
    """Kamailio #4118: the watchers of a closed WebSocket stayed forever.
    Here they end when their connection closes, counted, and a winfo
    watcher hears of it."""
    node = await make_node(transports=transports(served))
    tls = trusting(certs["server"][0]) if kind in ("tls", "wss") else None
    alice = await client(node, kind, "alice", open_clients, tls)
    for presentity in ("bob", "carol"):
        resp, d = await alice.subscribe(f"sip:{presentity}@example.com")
        assert resp.code == 200
        await alice.dialog_notifies(d, 1)
    assert (await node.storage.counts())[0] == 2
    await alice.aclose()

    async def gone() -> bool:
        return (await node.storage.counts())[0] == 0

    await wait_for(gone, 5.0)
    assert await metric(node, f'sip_flows_closed_total{{transport="{kind}"}}') == 2


async def test_a_notify_for_a_flow_this_node_does_not_hold_ends_the_subscription(
    make_node, open_clients, served
):
    """A WS watcher's NOTIFY can only travel over its own connection: sent
    without it (another node's connection, or one already gone), it fails as
    on Timer F and the subscription is removed."""
    node = await make_node(transports=transports(served))
    alice = await client(node, "ws", "alice", open_clients)
    resp, d = await alice.subscribe("sip:bob@example.com")
    await alice.dialog_notifies(d, 1)
    sub = (await node.storage.list_subscriptions(0, presentity=None, watcher=None, event=None, offset=0, limit=10))[0]
    elsewhere = replace(sub, source="127.0.0.1:9")  # no connection of this node
    codes: list[int] = []
    node.transports.send_request(b"NOTIFY", elsewhere, "z9hG4bKx", codes.append)
    await asyncio.sleep(0.05)
    assert codes == [408]


async def test_ws_upgrade_without_the_sip_subprotocol_is_refused(make_node, served):
    node = await make_node(transports=transports(served))
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(f"ws://127.0.0.1:{node.transports.ports['ws']}/sip")
        assert e.value.status == 400
        async with s.get(f"http://127.0.0.1:{node.transports.ports['ws']}/other") as r:
            assert r.status == 404


async def test_ws_message_without_content_length_and_binary_frames(make_node, served):
    """RFC 7118 §5: a WebSocket message is one SIP message, text or binary."""
    node = await make_node(transports=transports(served))
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"ws://127.0.0.1:{node.transports.ports['ws']}/sip", protocols=("sip",))
        assert ws.protocol == "sip"
        options = (
            "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS x.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n"
            "From: <sip:a@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n\r\n"
        )
        await ws.send_bytes(options.encode())
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith("SIP/2.0 200 ")
        await ws.send_str(options.replace("c1", "c2").replace("bK1", "bK2"))
        msg = await ws.receive(timeout=3)
        assert msg.data.startswith("SIP/2.0 200 ") and "Call-ID: c2" in msg.data
        await ws.close()


async def test_ws_frame_over_max_message_size_closes_the_connection(make_node, served):
    node = await make_node(transports=transports(served), limits={"max_message_size": 2048})
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"ws://127.0.0.1:{node.transports.ports['ws']}/sip", protocols=("sip",))
        await ws.send_str("OPTIONS " + "x" * 4096)
        msg = await ws.receive(timeout=3)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    await wait_for(lambda: _no_connections(node), 3.0)


async def _no_connections(node) -> bool:
    return not node.transports.connections


@pytest.mark.parametrize("kind", ["tls", "ws", "wss"])
async def test_handshake_or_upgrade_never_finished_is_closed_at_the_message_deadline(make_node, served, kind):
    """#12.12 for TLS and WebSocket: a connection is counted from accept,
    and its TLS handshake or HTTP upgrade must end within
    tcp_message_timeout (slowloris), like a TCP message."""
    node = await make_node(
        transports=transports(served), limits={"tcp_message_timeout": 0.5, "max_tcp_per_source": 2}
    )
    port = node.transports.ports[kind]
    held = []
    for _ in range(2):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /sip HTTP/1.1\r\n" if kind == "ws" else b"\x16\x03\x01")
        held.append((r, w))
    r3, w3 = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r3.read(), 2) == b""  # third from one source: closed at once
    assert await metric(node, 'sip_tcp_closed_total{reason="per-source"}') == 1
    assert node.transports.connections and len(node.transports.connections) == 2
    for r, _ in held:
        await asyncio.wait_for(r.read(), 8)  # closed by the node
    closed = await metric(node, 'sip_tcp_closed_total{reason="message-timeout"}')
    closed += await metric(node, 'sip_tcp_closed_total{reason="tls-handshake"}')  # its own timeout, the same bound
    assert closed == 2
    for _, w in held + [(r3, w3)]:
        w.close()


async def test_an_idle_flow_carrying_subscriptions_stays_open_until_they_end(make_node, open_clients, served):
    """tcp_idle_timeout would close a quiet WebSocket and so end the
    subscriptions on it: a flow that carries subscriptions is kept (their
    expiry bounds it); once they end it is idle like any connection."""
    node = await make_node(transports=transports(served), limits={"tcp_idle_timeout": 0.4})
    watcher = await client(node, "ws", "alice", open_clients)
    idle = await client(node, "ws", "carol", open_clients)
    resp, d = await watcher.subscribe("sip:bob@example.com")
    await watcher.dialog_notifies(d, 1)

    async def idle_closed() -> bool:
        return tuple(idle.local) not in node.transports.connections

    await wait_for(idle_closed, 5.0)
    assert tuple(watcher.local) in node.transports.connections
    assert (await node.storage.counts())[0] == 1
    assert (await watcher.resubscribe(d, 0)).code == 200  # unsubscribed: its final NOTIFY lets the flow go
    await watcher.dialog_notifies(d, 2)

    async def watcher_closed() -> bool:
        return tuple(watcher.local) not in node.transports.connections

    await wait_for(watcher_closed, 5.0)
    assert await metric(node, 'sip_tcp_closed_total{reason="idle"}') == 2
    assert await metric(node, 'sip_flows_closed_total{transport="ws"}') == 0


async def test_node_process_serves_tls_and_wss(tmp_path, served, certs):
    """The presence-node command (uvloop's start_tls) with TLS and WSS
    listeners, named in its ready line."""
    import json

    from procs import spawn, write_config

    cfg = write_config(
        tmp_path, state_dir=str(tmp_path / "state"), drain_timeout=1,
        transports={"tls": "127.0.0.1:0", "wss": "127.0.0.1:0", "ws_path": "/sip",
                    "tls_cert_file": str(served[0]), "tls_key_file": str(served[1])},
    )
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    async with spawn(tmp_path, "--config", str(cfg), "--admin-secret-file", str(secret)) as proc:
        ready = json.loads(proc.stdout)
        for kind in ("tls", "wss"):
            port = int(ready[kind].rsplit(":", 1)[1])
            url = f"wss://localhost:{port}/sip" if kind == "wss" else None
            c = await SipClient(("127.0.0.1", port), kind, "alice", tls=trusting(certs["server"][0]), ws_url=url).open()
            try:
                resp, d = await c.subscribe("sip:bob@example.com")
                assert resp.code == 200
                [n] = await c.dialog_notifies(d, 1)
                assert (n.headers.get("via") or "").startswith(f"SIP/2.0/{kind.upper()} ")
            finally:
                await c.aclose()
        assert await proc.terminate(within=6) == 0


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"tls": "127.0.0.1:0"}, "tls and wss need tls_cert_file"),
        ({"wss": "127.0.0.1:0"}, "tls and wss need tls_cert_file"),
        ({"tls_cert_file": "/x.crt"}, "go together"),
        ({"ws": "nohost"}, "transports.ws"),
        ({"ws": "127.0.0.1:0", "ws_path": "sip"}, "transports.ws_path"),
        ({"quic": "127.0.0.1:0"}, "transports.quic"),
    ],
)
def test_bad_transports_settings_are_refused_naming_the_key(settings, key):
    from presence_node.config import ConfigError, load

    with pytest.raises(ConfigError) as e:
        load(None, {"transports": settings})
    assert key in str(e.value)


async def test_unusable_certificate_files_stop_start_up_with_exit_2(tmp_path, certs):
    from procs import EXE, clean_env, write_config

    cfg = write_config(
        tmp_path, state_dir=str(tmp_path / "state"),
        transports={"tls": "127.0.0.1:0", "tls_cert_file": str(certs["server"][0]),
                    "tls_key_file": str(certs["rotated"][1])},  # a key of another certificate
    )
    proc = await asyncio.create_subprocess_exec(
        EXE, "--config", str(cfg), "--sip", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert "SIP TLS certificate" in err.decode() and "cannot be used" in err.decode()


@pytest.mark.parametrize("kind", ["tls", "ws", "wss"])
async def test_s26_a_tls_or_websocket_peer_that_never_reads_is_closed_as_timer_f(make_node, served, certs, kind):
    """#12.5 on TLS and WebSocket: the bytes queued for a peer that does not
    read are bounded (TLS: both layers counted), then it is closed and its
    NOTIFYs fail at once."""
    import socket

    node = await make_node(
        transports=transports(served), limits={"tcp_max_queued": 65536, "tcp_write_timeout": 0.3},
        notify={"t1": 2.0, "t2": 4.0},
    )
    pub = await SipClient(("127.0.0.1", node.sip_port), user="bob").open()
    try:
        assert (await pub.publish(pidf(note="x" * 50_000))).code == 200  # each NOTIFY ~50 KB
    finally:
        await pub.aclose()
    port = node.transports.ports[kind]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    tls = trusting(certs["server"][0])
    session = writer = None
    if kind == "tls":
        _, writer = await asyncio.open_connection(sock=sock, ssl=tls, server_hostname="localhost", limit=4096)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()
    else:
        sock.close()  # aiohttp opens its own; its reader stops once its queue is full
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls if kind == "wss" else False))
        scheme = "wss://localhost" if kind == "wss" else "ws://127.0.0.1"
        ws = await session.ws_connect(f"{scheme}:{port}/sip", protocols=("sip",), max_msg_size=0)
        ws.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

        async def send(data: bytes) -> None:
            await ws.send_str(data.decode())

    c = SipClient(("127.0.0.1", port), kind, "alice")
    if kind == "tls":
        c.local = sock.getsockname()[:2]
    try:
        for _ in range(200):
            # Polls (Expires: 0): one NOTIFY each, on this connection, never read.
            await send(c.build("SUBSCRIBE", "sip:bob@example.com", [("Event", "presence"), ("Expires", "0")]))

        async def closed() -> bool:
            return await metric(node, 'sip_tcp_closed_total{reason="write-queue"}') == 1

        await wait_for(closed, 8.0)
        assert not node.transports.connections
        assert await metric(node, 'sip_notify_failed_total{code="408",event="presence"}') >= 1
        assert await metric(node, "sip_tcp_queued_bytes") == 0
    finally:
        if session is not None:
            await session.close()
        if writer is not None:
            writer.close()
        sock.close()


@pytest.mark.parametrize("kind", ["tls", "wss"])
async def test_connections_given_up_during_the_tls_handshake_are_forgotten(make_node, served, kind):
    """A peer that closes, resets or sends junk before its handshake ends
    leaves nothing registered (its per-source count is freed)."""
    import socket
    import struct as st

    node = await make_node(transports=transports(served), limits={"max_tcp_per_source": 3})
    port = node.transports.ports[kind]
    for how in ("close", "reset", "junk", "partial", "close", "reset", "junk", "partial"):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if how == "junk":
            w.write(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        elif how == "partial":
            w.write(b"\x16\x03\x01\x02\x00\x01")
        if how == "reset":
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, st.pack("ii", 1, 0))
        await asyncio.sleep(0.05)
        w.close()

    async def none_left() -> bool:
        return not node.transports.connections

    await wait_for(none_left, 5.0)
    assert await metric(node, 'sip_tcp_closed_total{reason="per-source"}') == 0
    assert await metric(node, "sip_tcp_connections") == 0
