"""Federation with real ``presence-node`` processes on loopback (issue #5's
process-level scenarios): three single-node locations with memory storage,
and two locations of two nodes on two real PostgreSQL databases with a
node SIGKILLed.  No NOTIFY may be lost or sent twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bodies import pidf
from conftest import FAST, SECRET
from kube import free_port
from procs import Proc, clean_env, spawn, wait_ready, write_config
from sipclient import SipClient
from test_federation import make_pki

BOB = "sip:bob@example.com"
CAROL = "sip:carol@example.com"


class Federated:
    """Node processes of one federated cluster; ``layout`` maps node id to
    location, and a location with a DSN shares that database."""

    def __init__(self, root: Path, stack: contextlib.AsyncExitStack, layout: dict[str, str], dsns: dict[str, str],
                 channel: dict[str, Any]) -> None:
        self.root = root
        self.stack = stack
        self.layout = layout
        self.dsns = dsns
        #: More federation settings for every node (e.g. tls_*).
        self.channel = channel
        self.ports = {n: free_port(["127.0.0.1"]) for n in layout}
        (root / "admin-secret").write_text(SECRET)
        (root / "cluster-secret").write_text("cluster-secret-for-processes-0123")
        for loc, dsn in dsns.items():
            (root / f"dsn-{loc}").write_text(dsn)
        self.nodes: dict[str, Proc] = {}
        self.clients: list[SipClient] = []

    async def start(self, node_id: str) -> Proc:
        loc = self.layout[node_id]
        first = min(n for n, l in self.layout.items() if l == loc)
        settings: dict[str, Any] = {
            "node_id": node_id, "cluster_id": "fed", "admin_secret_file": str(self.root / "admin-secret"),
            "sharing_tags": {loc: "active" if node_id == first else "backup"}, **FAST, "log_level": "warning",
            "federation": {
                "mode": "on-demand-sharing", "listen": f"127.0.0.1:{self.ports[node_id]}", "location": loc,
                "secret_file": str(self.root / "cluster-secret"), "heartbeat": 0.2, "peer_timeout": 1.0,
                "peers": [
                    {"id": p, "address": f"127.0.0.1:{self.ports[p]}", "location": l}
                    for p, l in self.layout.items() if p != node_id
                ],
                **self.channel,
            },
        }
        if loc in self.dsns:
            settings["storage"] = {"backend": "postgres", "dsn_file": str(self.root / f"dsn-{loc}")}
        work = self.root / node_id
        cfg = write_config(work, **settings)
        proc = await self.stack.enter_async_context(spawn(work, "--config", str(cfg), env=clean_env()))
        await wait_ready(proc.admin_port)
        self.nodes[node_id] = proc
        return proc

    async def get(self, node_id: str, path: str) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{self.nodes[node_id].admin_port}{path}",
                             headers={"Authorization": f"Bearer {SECRET}"}) as r:
                assert r.status == 200
                return await r.json() if path != "/metrics" else await r.text()

    async def post(self, node_id: str, path: str) -> int:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{self.nodes[node_id].admin_port}{path}",
                              headers={"Authorization": f"Bearer {SECRET}"}) as r:
                return r.status

    async def metric(self, node_id: str, name: str, **labels: str) -> float:
        text = await self.get(node_id, "/metrics")
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return s.value
        return 0.0

    async def all_up(self) -> None:
        for _ in range(200):
            views = [await self.get(n, "/cluster") for n in self.nodes]
            if all(p["up"] for v in views for p in v["peers"] if p["node"] in self.nodes):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("peers never all up")

    async def client(self, node_id: str, user: str) -> SipClient:
        c = await SipClient(("127.0.0.1", self.nodes[node_id].sip_port), "udp", user).open()
        self.clients.append(c)
        return c


@contextlib.asynccontextmanager
async def federated(root: Path, layout: dict[str, str], dsns: dict[str, str] | None = None,
                    **channel: Any) -> AsyncIterator[Federated]:
    async with contextlib.AsyncExitStack() as stack:
        f = Federated(root, stack, layout, dsns or {}, channel)
        await asyncio.gather(*(f.start(n) for n in layout))
        await f.all_up()
        try:
            yield f
        finally:
            for c in f.clients:
                c.close()


async def watch_through(f: Federated, via: str, told: str):  # type: ignore[no-untyped-def]
    """alice watches BOB through node ``via`` (first NOTIFY received) once
    node ``told`` knows of the interest."""
    w = await f.client(via, "alice")
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    await watched_by(f, told, via, BOB)
    return w, d


async def watched_by(f: Federated, node_id: str, peer: str, presentity: str) -> None:
    """Wait until ``node_id`` knows that ``peer`` watches ``presentity``
    (its interest reached it)."""
    for _ in range(100):
        view = await f.get(node_id, "/cluster")
        if any(p["node"] == peer and p["interest"] for p in view["peers"]):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{node_id} never heard {peer}'s interest in {presentity}")


async def test_three_nodes_broadcast_query_and_survive_a_killed_node(tmp_path):
    """PUBLISH on n1 reaches watchers on n2 and n3; a SUBSCRIBE on n3 for a
    presentity published earlier on n1 gets its state in the first NOTIFY
    (one query), a second one sends no query; with n1 killed, n2 and n3
    keep serving their own data."""
    async with federated(tmp_path, {"n1": "n1", "n2": "n2", "n3": "n3"}) as f:
        pub = await f.client("n1", "bob")
        assert (await pub.publish(pidf(CAROL, "open", note="carol-early"), uri=CAROL)).code == 200
        w2, w3 = await f.client("n2", "alice"), await f.client("n3", "dave")
        _, d2 = await w2.subscribe(BOB)
        _, d3 = await w3.subscribe(BOB)
        await w2.dialog_notifies(d2, 1)
        await w3.dialog_notifies(d3, 1)
        await watched_by(f, "n1", "n2", BOB)
        await watched_by(f, "n1", "n3", BOB)
        assert (await pub.publish(pidf(BOB, "open", note="bob-now"))).code == 200
        [_, a] = await w2.dialog_notifies(d2, 2)
        [_, b] = await w3.dialog_notifies(d3, 2)
        assert b"bob-now" in a.body and a.body == b.body

        queries = await f.metric("n3", "federation_queries_total", event="presence")
        _, dc = await w3.subscribe(CAROL)
        [first] = await w3.dialog_notifies(dc, 1)
        assert b"carol-early" in first.body
        assert await f.metric("n3", "federation_queries_total", event="presence") == queries + 1
        other = await f.client("n3", "erin")
        _, dc2 = await other.subscribe(CAROL)
        [first2] = await other.dialog_notifies(dc2, 1)
        assert b"carol-early" in first2.body
        assert await f.metric("n3", "federation_queries_total", event="presence") == queries + 1

        await f.nodes["n1"].kill()
        for _ in range(60):  # peer_timeout 1 s: n2 and n3 see n1 down
            views = [await f.get(n, "/cluster") for n in ("n2", "n3")]
            up = {(v["node"], p["node"]): p["up"] for v in views for p in v["peers"]}
            if not up[("n2", "n1")] and not up[("n3", "n1")]:
                break
            await asyncio.sleep(0.1)
        assert up == {("n2", "n1"): False, ("n2", "n3"): True, ("n3", "n1"): False, ("n3", "n2"): True}
        own = await f.client("n2", "frank")
        assert (await own.publish(pidf("sip:frank@example.com", "open", note="frank"), uri="sip:frank@example.com")).code == 200
        _, df = await w3.subscribe("sip:frank@example.com")
        notes = await w3.wait_notifies(1, 3.0, lambda m: m.headers.get("call-id") == df.call_id and b"frank" in m.body)
        assert notes
        local = await f.client("n3", "gina")
        assert (await local.publish(pidf("sip:gina@example.com", "open", note="gina"), uri="sip:gina@example.com")).code == 200
        _, dg = await w3.subscribe("sip:gina@example.com")
        [g] = await w3.dialog_notifies(dg, 1)
        assert b"gina" in g.body


async def test_tls_channel_between_node_processes(tmp_path):
    """#12.14 under uvloop, the presence-node process's event loop (the
    in-process tests run plain asyncio): two nodes with federation TLS link
    up both ways (each one's outbound connection, each one's gate with TLS
    put under it at accept) and a PUBLISH on n1 reaches a watcher on n2.
    A ClientHello read before a start_tls task ran used to reach the gate,
    not TLS: no link came up, every connection was cut at auth_timeout."""
    pki = make_pki(tmp_path, "cluster")
    async with federated(tmp_path, {"n1": "n1", "n2": "n2"}, **pki) as f:
        w, d = await watch_through(f, "n2", "n1")
        pub = await f.client("n1", "bob")
        assert (await pub.publish(pidf(BOB, "open", note="over tls"))).code == 200
        [_, got] = await w.dialog_notifies(d, 2)
        assert b"over tls" in got.body
        for n in ("n1", "n2"):  # each one's outbound link is the other's inbound
            assert await f.metric(n, "cluster_connections", state="authenticated") == 1
            assert await f.metric(n, "cluster_connections_closed_total", reason="auth-timeout") == 0
            assert await f.metric(n, "cluster_connections_closed_total", reason="tls") == 0


async def test_redundancy_two_locations_two_databases_node_killed(tmp_path, pg_server):
    """Locations A and B, two nodes each, one database each.  A watcher in
    B, PUBLISHes in A: each NOTIFY arrives exactly once, before and after
    b1 (B's active node) is SIGKILLed and B is activated on b2."""
    dsns = {"A": pg_server.create_database(), "B": pg_server.create_database()}
    async with federated(tmp_path, {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}, dsns) as f:
        w, d = await watch_through(f, "b2", "a2")
        pub = await f.client("a2", "bob")
        assert (await pub.publish(pidf(BOB, "open", note="first"))).code == 200
        await w.dialog_notifies(d, 2)
        await f.nodes["b1"].kill()
        assert await f.post("b2", "/tags/B/activate") == 200
        pub_a1 = await f.client("a1", "bob")
        assert (await pub_a1.publish(pidf(BOB, "closed", note="second"), extra=[])).code == 200
        notes = await w.wait_notifies(3, 3.0, lambda m: m.headers.get("call-id") == d.call_id)
        assert b"second" in notes[-1].body
        await asyncio.sleep(0.5)
        bodies = [n.body for n in w.notifies_for(d)]
        assert len(bodies) == 3, ("a NOTIFY was lost or sent twice", [n.headers.get("cseq") for n in w.notifies_for(d)], bodies)
        tags = {t["tag"]: t["owner"] for t in (await f.get("a1", "/cluster"))["tags"]}
        for _ in range(60):
            if tags.get("B") == "b2":
                break
            await asyncio.sleep(0.05)
            tags = {t["tag"]: t["owner"] for t in (await f.get("a1", "/cluster"))["tags"]}
        assert tags.get("B") == "b2" and tags.get("A") == "a1"
