"""Federation (issue #5) with nodes in one event loop, real sockets: the
cluster channel, on-demand and full sharing, queries, resync, security.
Each node is its own location with memory storage, as in the seed's third
scenario; the process-level and two-database scenarios are in
test_federation_procs.py."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bodies import pidf
from conftest import SECRET
from kube import free_port

BOB = "sip:bob@example.com"
CLUSTER_SECRET = "cluster-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def cluster_secret_file(tmp_path):
    path = tmp_path / "cluster-secret"
    path.write_text(CLUSTER_SECRET + "\n")
    return path


@pytest.fixture
async def federation(make_node, cluster_secret_file):
    """Start ``n`` federated nodes (ids n1..nN, each its own location)."""

    async def start(n: int, mode: str = "on-demand-sharing", *, ports: list[int] | None = None, only: list[int] | None = None, **fed: Any):
        ports = ports or [free_port(["127.0.0.1"]) for _ in range(n)]
        nodes = []
        for i in only if only is not None else range(n):
            peers = [
                {"id": f"n{j + 1}", "address": f"127.0.0.1:{ports[j]}"} for j in range(n) if j != i
            ]
            node = await make_node(
                node_id=f"n{i + 1}", cluster_id="fed", sharing_tags={f"n{i + 1}": "active"},
                federation={
                    "mode": mode, "listen": f"127.0.0.1:{ports[i]}", "peers": peers,
                    "secret_file": str(cluster_secret_file), "heartbeat": 0.2, "peer_timeout": 1.0, **fed,
                },
            )
            nodes.append(node)
        await until(lambda: all(nd.federation.peers_up == len(nodes) - 1 for nd in nodes))
        return nodes

    return start


async def until(cond, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.02)


async def counters(node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{node.admin_port}/metrics", headers=AUTH) as r:
            text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(m, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_publish_on_one_node_reaches_watchers_on_two_others(federation, make_client):
    """S77 across locations: a PUBLISH through n1 reaches watchers whose
    SUBSCRIBEs went through n2 and n3."""
    n1, n2, n3 = await federation(3)
    w2 = await make_client("alice", target=n2)
    w3 = await make_client("carol", target=n3)
    _, d2 = await w2.subscribe(BOB)
    _, d3 = await w3.subscribe(BOB)
    await w2.dialog_notifies(d2, 1)
    await w3.dialog_notifies(d3, 1)
    await until(lambda: all((BOB[4:], "presence") in n1.federation.interest[p] for p in ("n2", "n3")))
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="via n1"))).code == 200
    [_, a] = await w2.dialog_notifies(d2, 2)
    [_, c] = await w3.dialog_notifies(d3, 2)
    assert b"via n1" in a.body and a.body == c.body
