"""The seed's shared-database scenarios with real node processes, SIGKILL
and a real PostgreSQL: HA failover, load balancing with a dead node taken
over by a survivor, split brain forced by the database, and rolling
restarts.  No NOTIFY may be lost or sent twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import psycopg
import pytest

from bodies import pidf
from conftest import FAST as CONFTEST_FAST
from conftest import SECRET
from procs import Proc, clean_env, spawn, wait_ready, write_config
from sipclient import Dialog, SipClient
from wire import cseq_num, sub_state

BOB = "sip:bob@example.com"
FAST = {**CONFTEST_FAST, "log_level": "warning"}


class Cluster:
    def __init__(self, root: Path, dsn: str, stack: contextlib.AsyncExitStack) -> None:
        self.root = root
        self.dsn = dsn
        self.stack = stack
        (root / "dsn").write_text(dsn)
        (root / "secret").write_text(SECRET)
        self.nodes: dict[str, Proc] = {}

    async def start(self, node_id: str, tags: dict[str, str], default_tag: str | None = None) -> Proc:
        work = self.root / node_id
        cfg = write_config(
            work, node_id=node_id, cluster_id="c1", sharing_tags=tags, default_tag=default_tag,
            storage={"backend": "postgres", "dsn_file": str(self.root / "dsn")},
            admin_secret_file=str(self.root / "secret"), **FAST,
        )
        proc = await self.stack.enter_async_context(spawn(work, "--config", str(cfg), env=clean_env()))
        await wait_ready(proc.admin_port)
        self.nodes[node_id] = proc
        return proc

    async def admin(self, node_id: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        port = self.nodes[node_id].admin_port
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {SECRET}"}, **kw) as r:
                return r.status, await r.json(content_type=None)

    def client(self, node_id: str, user: str) -> SipClient:
        return SipClient(("127.0.0.1", self.nodes[node_id].sip_port), "udp", user)


@pytest.fixture
async def cluster(tmp_path, pg_dsn) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        c = Cluster(tmp_path, pg_dsn, stack)
        yield c
        for client in getattr(c, "clients", []):
            client.close()


async def open_client(cluster: Cluster, node_id: str, user: str) -> SipClient:
    c = await cluster.client(node_id, user).open()
    cluster.__dict__.setdefault("clients", []).append(c)
    return c


def terminated(client: SipClient, d: Dialog) -> list[Any]:
    return [n for n in client.notifies_for(d) if sub_state(n)[0] == "terminated"]


async def await_terminated(pairs: list[tuple[SipClient, Dialog]], timeout: float) -> None:
    """Wait until every dialog has its terminated NOTIFY, then a little more,
    so that a duplicate (the fault under test) would have arrived too."""
    for w, d in pairs:
        await w.wait_notifies(1, timeout, lambda m: m.headers.get("call-id") == d.call_id
                              and sub_state(m)[0] == "terminated")
    await asyncio.sleep(1.0)


async def test_ha_failover_keeps_notifying_and_expires_once(cluster):
    await cluster.start("n1", {"vip": "active"})
    await cluster.start("n2", {"vip": "backup"})
    watchers = []
    for i in range(5):
        w = await open_client(cluster, "n1", f"w{i}")
        resp, d = await w.subscribe(BOB, expires=4)
        assert resp.code == 200
        await w.dialog_notifies(d, 1)
        watchers.append((w, d))
    await cluster.nodes["n1"].kill()  # SIGKILL: no clean-up at all
    status, tag = await cluster.admin("n2", "POST", "/tags/vip/activate")
    assert status == 200 and tag["state"] == "active" and tag["epoch"] == 2
    pub = await open_client(cluster, "n2", "bob")
    assert (await pub.publish(pidf(BOB, note="after failover"))).code == 200
    for w, d in watchers:
        notes = await w.dialog_notifies(d, 2)
        assert b"after failover" in notes[1].body
        assert cseq_num(notes[1]) == cseq_num(notes[0]) + 1
    await await_terminated(watchers, 8.0)  # the subscriptions expire, on n2
    for w, d in watchers:
        assert len(terminated(w, d)) == 1
        assert len(w.notifies_for(d)) == 3


async def test_load_balancing_dead_node_taken_over_by_survivor(cluster):
    for n in ("n1", "n2", "n3"):
        await cluster.start(n, {t: ("active" if t == n else "backup") for t in ("n1", "n2", "n3")}, default_tag=n)
    per_node: dict[str, list[tuple[SipClient, Dialog]]] = {}
    for n in ("n1", "n2", "n3"):
        for i in range(3):
            w = await open_client(cluster, n, f"{n}w{i}")
            _, d = await w.subscribe(BOB, expires=5 if n == "n2" else 3600)
            await w.dialog_notifies(d, 1)
            per_node.setdefault(n, []).append((w, d))
    await cluster.nodes["n2"].kill()
    status, _ = await cluster.admin("n3", "POST", "/tags/n2/activate")
    assert status == 200
    pub = await open_client(cluster, "n1", "bob")
    await pub.publish(pidf(BOB))
    for pairs in per_node.values():
        for w, d in pairs:
            await w.dialog_notifies(d, 2)
    await await_terminated(per_node["n2"], 8.0)
    for w, d in per_node["n2"]:
        assert len(terminated(w, d)) == 1 and len(w.notifies_for(d)) == 3
    for n in ("n1", "n3"):
        for w, d in per_node[n]:
            assert terminated(w, d) == [] and len(w.notifies_for(d)) == 2


async def test_split_brain_forced_in_the_database_still_one_terminated_notify(cluster):
    await cluster.start("n1", {"vip": "active"})
    await cluster.start("n2", {"vip": "backup"})
    pairs = []
    for i in range(10):
        w = await open_client(cluster, ("n1", "n2")[i % 2], f"w{i}")
        _, d = await w.subscribe(BOB, expires=2)
        await w.dialog_notifies(d, 1)
        pairs.append((w, d))
    # Flip the owner back and forth, behind the nodes' backs, while the
    # subscriptions expire: both nodes sweep, both at times "own" vip.
    async with await psycopg.AsyncConnection.connect(cluster.dsn, autocommit=True) as conn:
        for i in range(30):
            await conn.execute("UPDATE sharing_tags SET owner = %s, epoch = epoch + 1 WHERE name = 'vip'",
                               (("n1", "n2")[i % 2],))
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    for w, d in pairs:
        assert len(terminated(w, d)) == 1, [n.headers.get("subscription-state") for n in w.notifies_for(d)]


async def test_rolling_restart_keeps_every_record(cluster):
    await cluster.start("n1", {"vip": "active"})
    await cluster.start("n2", {"vip": "backup"})
    w = await open_client(cluster, "n1", "alice")
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    pub = await open_client(cluster, "n1", "bob")
    etag = (await pub.publish(pidf(BOB))).headers.get("sip-etag")
    for n in ("n1", "n2"):
        assert await cluster.nodes[n].terminate(10) == 0
        await cluster.start(n, {"vip": "active" if n == "n1" else "backup"})
    status, subs = await cluster.admin("n2", "GET", "/subscriptions")
    assert status == 200 and [s["id"] for s in subs["items"]] == [d.to_tag]
    pub2 = await open_client(cluster, "n2", "bob")
    assert (await pub2.publish(None, etag=etag)).code == 200  # the publication survived
    status, tags = await cluster.admin("n1", "GET", "/tags")
    assert {t["tag"]: t["owner"] for t in tags["items"]}["vip"] == "n1"
