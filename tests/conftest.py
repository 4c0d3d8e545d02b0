"""Shared fixtures: nodes on loopback with port 0, and test clients.

Nodes run in the test's own event loop (real UDP/TCP sockets, real admin
HTTP server); tests that need a separate process use ``presence-node``
through :func:`tests.procs.spawn_node`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from presence_node.config import Config  # noqa: E402
from presence_node.node import Node  # noqa: E402
from pgserver import PostgresServer  # noqa: E402
from sipclient import SipClient  # noqa: E402
from wire import FakeClock  # noqa: E402

SECRET = "test-secret-0123456789abcdef"

#: Short expiry bounds so expiry tests finish quickly (D10 allows lowering).
FAST = {
    "subscription_expiry": {"min": 1, "default": 3600, "max": 3600},
    "publication_expiry": {"min": 1, "default": 3600, "max": 3600},
    "expiry_interval": 0.2,
    "notify": {"t1": 0.1, "t2": 0.4},
    # A stopping node waits this long at most for NOTIFYs nobody answers
    # (a test's client already closed): not the production 5 s per node.
    "drain_timeout": 1.0,
}


@pytest.fixture
def clock() -> FakeClock:
    """One clock for all the nodes of a test (federated peers compare
    their timestamps)."""
    return FakeClock()


@pytest.fixture
def kmock_options():
    """KMock's ``kmock`` fixture serves the project's emulator."""
    from kube_emulator import ApiEmulator

    return {"cls": ApiEmulator}


@pytest.fixture(scope="session")
def pg_server():
    """One private PostgreSQL server for the whole run (real, Debian's)."""
    root = Path(tempfile.mkdtemp(prefix="presence-pg-"))
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """A fresh empty database on the test server."""
    return pg_server.create_database()


@pytest.fixture
async def open_clients() -> AsyncIterator[list[SipClient]]:
    """Clients of a test, closed only after its nodes have stopped, so they
    still answer the NOTIFYs a stopping node sends (S30)."""
    clients: list[SipClient] = []
    yield clients
    for c in clients:
        await c.aclose()


@pytest.fixture
async def make_node(tmp_path, open_clients, clock) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    nodes: list[Node] = []

    async def factory(**overrides: Any) -> Node:
        data: dict[str, Any] = {
            "sip": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "node_id": f"n{len(nodes) + 1}",
            "state_dir": str(tmp_path / f"state{len(nodes)}"),
            "log_level": "warning",
            **FAST,
        }
        storage = overrides.pop("storage_override", None)
        data.update(overrides)
        node = Node(Config.model_validate(data), secret=SECRET, storage=storage, clock=clock)
        await node.start()
        nodes.append(node)
        return node

    yield factory
    for n in nodes:
        await n.stop()


@pytest.fixture
async def node(make_node) -> Node:
    return await make_node()


@pytest.fixture
def make_client(node: Node, open_clients: list[SipClient]) -> Callable[..., Awaitable[SipClient]]:
    async def factory(user: str = "alice", transport: str = "udp", target: Node | None = None, **kw: Any) -> SipClient:
        n = target or node
        c = await SipClient(("127.0.0.1", n.sip_port), transport, user, **kw).open()
        open_clients.append(c)
        return c

    return factory


@pytest.fixture
async def http():
    """An HTTP client for the admin API (closed after the test)."""
    async with aiohttp.ClientSession() as session:
        yield session
