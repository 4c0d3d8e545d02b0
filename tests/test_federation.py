"""Federation (issue #5) with nodes in one event loop, real sockets: the
cluster channel, on-demand and full sharing, queries, resync, security.
Each node is its own location with memory storage, as in the seed's third
scenario; the process-level and two-database scenarios are in
test_federation_procs.py."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from bodies import pidf
from conftest import SECRET
from kube import eventually, free_port
from wire import Samples, parse_metrics

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


async def counters(node) -> Samples:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{node.admin_port}/metrics", headers=AUTH) as r:
            return parse_metrics(await r.text())


async def watch_bob(make_client, via, told):
    """A watcher of BOB through node ``via`` (its first NOTIFY received),
    once node ``told`` has heard of the interest."""
    w = await make_client("alice", target=via)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    await until(lambda: (BOB[4:], "presence") in told.federation.interest[via.config.node_id])
    return w, d


def metric(m, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def counted(node, name: str, **labels: str) -> float:
    """A counter as ``node`` holds it now, read without a scrape (for
    :func:`until`).  A peer's messages are handled in order, so once the
    last one sent is counted, every earlier one has been handled."""
    return metric(parse_metrics(node.metrics.render().decode()), name, **labels)


async def test_s77_publish_on_one_node_reaches_watchers_on_two_others(federation, make_client):
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


def sent(m, kind: str) -> float:
    return metric(m, "cluster_messages_sent_total", kind=kind)


async def test_subscribe_queries_once_and_first_notify_carries_remote_state(federation, make_client):
    """A SUBSCRIBE on n3 for a presentity published earlier on n1: one
    query, answered by the holder only, in time for the first NOTIFY; a
    second SUBSCRIBE there sends no query."""
    n1, n2, n3 = await federation(3)
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="held by n1"))).code == 200
    w = await make_client("alice", target=n3)
    _, d = await w.subscribe(BOB)
    [first] = await w.dialog_notifies(d, 1)
    assert b"held by n1" in first.body
    m3 = await counters(n3)
    assert metric(m3, "federation_queries_total", event="presence") == 1
    # The query rode on the new interest: one message to each peer, no other.
    assert sent(m3, "interest") == 2 and sent(m3, "query") == 0
    assert sent(await counters(n2), "answer") == 0  # n2 holds nothing: no answer
    assert sent(await counters(n1), "answer") == 1
    w2 = await make_client("carol", target=n3)
    _, d2 = await w2.subscribe(BOB)
    [first2] = await w2.dialog_notifies(d2, 1)
    assert b"held by n1" in first2.body
    assert metric(await counters(n3), "federation_queries_total", event="presence") == 1


async def test_s09_answer_arriving_during_the_wait_sends_nothing_before_cseq_1(federation, make_client):
    """Regression: the query answer notified the new subscription (CSeq 2)
    before its first NOTIFY (CSeq 1) went out.  Now the first NOTIFY comes
    first, with the remote state, and CSeqs rise in arrival order."""
    from wire import cseq_num

    n1, n2 = await federation(2)
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="remote"))).code == 200
    w = await make_client("alice", target=n2)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    await asyncio.sleep(0.4)
    got = w.notifies_for(d)
    assert cseq_num(got[0]) == 1 and b"remote" in got[0].body
    assert [cseq_num(n) for n in got] == list(range(1, len(got) + 1))


async def test_query_answer_carries_every_live_publication(federation, make_client):
    """The reference answers with the oldest publication only; we send all
    of them, so the composed document has both devices' tuples."""
    n1, n2 = await federation(2)
    phone = await make_client("bob", target=n1)
    laptop = await make_client("bob", target=n1)
    assert (await phone.publish(pidf(BOB, "open", tuple_id="phone", note="phone"))).code == 200
    assert (await laptop.publish(pidf(BOB, "closed", tuple_id="laptop", note="laptop"))).code == 200
    w = await make_client("alice", target=n2)
    _, d = await w.subscribe(BOB)
    [first] = await w.dialog_notifies(d, 1)
    assert b'id="phone"' in first.body and b'id="laptop"' in first.body


async def test_late_answer_gives_offline_first_then_the_real_state(federation, make_client):
    """With no time to wait (query_wait 0), the first NOTIFY has no remote
    state and a second one brings it when the answer arrives."""
    n1, n2 = await federation(2, query_wait=0)
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="late"))).code == 200
    w = await make_client("alice", target=n2)
    _, d = await w.subscribe(BOB)
    first, second = await w.dialog_notifies(d, 2)
    assert b"late" not in first.body and b"late" in second.body


async def test_unanswered_query_is_not_repeated_until_its_ttl(federation, make_client, clock):
    """Nobody holds the presentity: the query stays pending (no second
    query) until query_ttl, then a later subscriber may query again."""
    n1, n2 = await federation(2, query_wait=0.05, query_ttl=0.6)
    w = await make_client("alice", target=n2)
    for _ in range(2):
        _, d = await w.subscribe(BOB)
        await w.dialog_notifies(d, 1)
    assert metric(await counters(n2), "federation_queries_total", event="presence") == 1
    clock.advance(0.7)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    m2 = await counters(n2)
    assert metric(m2, "federation_queries_total", event="presence") == 2
    assert sent(m2, "interest") == 1 and sent(m2, "query") == 1  # the interest stands; the query goes alone


async def test_refused_publish_is_never_sent(federation, make_client):
    """A PUBLISH answered 412 (the reference broadcasts it anyway) sends
    no cluster message; an accepted one sends one to the watching node."""
    n1, n2 = await federation(2)
    w, d = await watch_bob(make_client, n2, n1)
    pub = await make_client("bob", target=n1)
    before = sent(await counters(n1), "publish")
    assert (await pub.publish(pidf(BOB), etag="no-such-etag")).code == 412
    assert sent(await counters(n1), "publish") == before
    assert (await pub.publish(pidf(BOB))).code == 200
    assert sent(await counters(n1), "publish") == before + 1


async def test_removal_and_expiry_reach_remote_watchers(federation, make_client, clock):
    n1, n2 = await federation(2)
    w, d = await watch_bob(make_client, n2, n1)
    pub = await make_client("bob", target=n1)
    r = await pub.publish(pidf(BOB, "open", note="short"), expires=1)
    assert r.code == 200
    await w.dialog_notifies(d, 2)
    clock.advance(1.1)  # n1's next expiry sweep ends it
    _, got, gone = await w.dialog_notifies(d, 3)
    assert b"short" in got.body and b"short" not in gone.body  # expired on n1, told to n2
    r = await pub.publish(pidf(BOB, "open", note="again"))
    etag = r.headers.get("sip-etag")
    await w.dialog_notifies(d, 4)
    assert (await pub.publish(None, etag=etag, expires=0)).code == 200
    notes = await w.dialog_notifies(d, 5)
    assert b"again" not in notes[-1].body


async def test_messages_per_publish_follow_interest_not_cluster_size(federation, make_client):
    """Four nodes, one watcher on n2: each PUBLISH on n1 costs one message;
    once the watcher leaves, none."""
    n1, n2, n3, n4 = await federation(4)
    w, d = await watch_bob(make_client, n2, n1)
    pub = await make_client("bob", target=n1)
    before = sent(await counters(n1), "publish")
    for i in range(5):
        assert (await pub.publish(pidf(BOB, note=f"p{i}"))).code == 200
    m = await counters(n1)
    # (seen to fail once in a full-suite run, not reproduced: say why next time)
    assert sent(m, "publish") - before == 5, (sent(m, "publish") - before, dict(n1.federation.interest), m)
    assert (await w.resubscribe(d, 0)).code == 200
    await until(lambda: (BOB[4:], "presence") not in n1.federation.interest["n2"])
    before = sent(await counters(n1), "publish")
    assert (await pub.publish(pidf(BOB, note="unwatched"))).code == 200
    assert sent(await counters(n1), "publish") == before


async def test_a_watcher_dropped_after_a_failed_notify_withdraws_the_interest(federation, make_client):
    """S26 across locations: n2's only watcher of bob answers a NOTIFY
    with 481, so n2 removes the subscription; n2 must then withdraw its
    interest, or n1 would go on sending it every PUBLISH of bob."""
    n1, n2 = await federation(2)
    w, d = await watch_bob(make_client, n2, n1)
    pub = await make_client("bob", target=n1)
    w.notify_answer = 481
    assert (await pub.publish(pidf(BOB, note="gone"))).code == 200
    await until(lambda: (BOB[4:], "presence") not in n1.federation.interest["n2"])
    before = sent(await counters(n1), "publish")
    assert (await pub.publish(pidf(BOB, note="unwatched"))).code == 200
    assert sent(await counters(n1), "publish") == before


async def test_packages_not_in_cluster_pres_events_stay_local(federation, make_client):
    """dialog (BLF) is not federated by default: a watcher on n2 never sees
    a dialog PUBLISH made on n1, and nothing is sent for it."""
    from bodies import dialog, dialog_info

    n1, n2 = await federation(2)
    w = await make_client("alice", target=n2)
    _, d = await w.subscribe(BOB, event="dialog")
    await w.dialog_notifies(d, 1)
    pub = await make_client("bob", target=n1)
    before = await counters(n1)
    assert (await pub.publish(dialog_info(BOB, dialog("d1")), event="dialog", ctype="application/dialog-info+xml")).code == 200
    await asyncio.sleep(0.3)
    assert len(w.notifies_for(d)) == 1
    after = await counters(n1)
    assert sent(after, "publish") == sent(before, "publish") and sent(after, "query") == sent(before, "query")


async def test_full_sharing_restarted_node_serves_what_it_never_received(federation, make_client):
    """full-sharing: n2, restarted, pulls n1's presentities on connect and
    serves them to a new watcher with no query."""
    ports = [free_port(["127.0.0.1"]) for _ in range(2)]
    n1, n2 = await federation(2, "full-sharing", ports=ports)
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="shared"))).code == 200
    await n2.stop()
    [n2b] = await federation(2, "full-sharing", ports=ports, only=[1])
    await until(lambda: n2b.federation.channel.up("n1"))
    w = await make_client("alice", target=n2b)
    for _ in range(50):
        _, d = await w.subscribe(BOB, expires=0)  # polls until the sync landed
        [n] = await w.dialog_notifies(d, 1)
        if b"shared" in n.body:
            break
        await asyncio.sleep(0.05)
    assert b"shared" in n.body
    assert metric(await counters(n2b), "federation_queries_total", event="presence") == 0


class Cut:
    """A TCP proxy standing between two nodes' cluster channel, which the
    test can cut (connections closed, new ones refused) and heal; it
    records what each connection carried towards the target (an
    eavesdropper's capture)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port(["127.0.0.1"])
        self.open = True
        self.captured: list[bytearray] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> "Cut":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_w}
        capture = bytearray()
        self.captured.append(capture)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, record: bytearray | None = None) -> None:
            try:
                while data := await r.read(65536):
                    if record is not None:
                        record += data
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w, capture), pipe(up_r, writer))

    def cut(self) -> None:
        self.open = False
        for w in self._writers:
            w.close()
        self._writers.clear()

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def proxied_pair(make_node, cluster_secret_file):
    """Start n1 and n2 of ``mode``; n1's link to n2 passes through a
    :class:`Cut` proxy; ``before_n2`` runs once n1 is up."""
    proxies: list[Cut] = []

    async def start(mode: str, before_n2=None):
        p1, p2 = free_port(["127.0.0.1"]), free_port(["127.0.0.1"])
        proxy = await Cut(p2).start()
        proxies.append(proxy)
        fed = {"mode": mode, "secret_file": str(cluster_secret_file), "heartbeat": 0.2, "peer_timeout": 1.0}
        n1 = await make_node(node_id="n1", cluster_id="fed", federation={
            "listen": f"127.0.0.1:{p1}", **fed, "peers": [{"id": "n2", "address": f"127.0.0.1:{proxy.port}"}]})
        if before_n2 is not None:
            await before_n2(n1)
        n2 = await make_node(node_id="n2", cluster_id="fed", federation={
            "listen": f"127.0.0.1:{p2}", **fed, "peers": [{"id": "n1", "address": f"127.0.0.1:{p1}"}]})
        return n1, n2, proxy

    yield start
    for proxy in proxies:
        proxy.close()


async def test_messages_lost_in_a_partition_are_repaired_after_healing(proxied_pair, make_client):
    """n1's messages to n2 pass through a proxy; it is cut while n1 takes
    PUBLISHes (those messages are lost), then healed: n2 sees the gap in
    the sequence numbers, asks for a resync, and its watcher gets the
    latest state without another PUBLISH."""
    n1, n2, proxy = await proxied_pair("on-demand-sharing")
    await until(lambda: n1.federation.channel.connected("n2") and n2.federation.channel.up("n1"))
    w, d = await watch_bob(make_client, n2, n1)
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="before"))).code == 200
    await w.dialog_notifies(d, 2)
    proxy.cut()
    await until(lambda: not n1.federation.channel.connected("n2"))
    r = await pub.publish(pidf(BOB, "open", note="during-1"))
    await pub.publish(pidf(BOB, "closed", note="during-2"), etag=r.headers.get("sip-etag"))
    await asyncio.sleep(0.3)
    assert not any(b"during" in n.body for n in w.notifies_for(d))  # really lost
    proxy.heal()
    notes = await w.wait_notifies(3, 5.0, lambda m: m.headers.get("call-id") == d.call_id)
    assert b"during-2" in notes[-1].body and b"during-1" not in notes[-1].body
    m2 = await counters(n2)
    assert metric(m2, "cluster_messages_lost_total", peer="n1") >= 2
    assert metric(m2, "federation_resyncs_total", cause="gap") >= 1


async def test_forged_replayed_stale_wrong_cluster_and_malformed_messages_are_refused(federation, make_client):
    """The test plays n2 (configured, never started) towards n1's channel:
    only the authentic, fresh, in-order message is applied; each refusal is
    counted by reason and changes nothing (the watcher on n1 sees no
    NOTIFY)."""
    import base64
    import time

    from presence_node.federation.wire import Envelope, seal

    [n1] = await federation(2, only=[0])
    w = await make_client("alice", target=n1)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    doc = pidf(BOB, "open", note="injected")
    body = {"key": ["bob@example.com", "presence"], "old": None, "pub": {
        "p": "bob@example.com", "e": "presence", "etag": "n2.x.1", "body": base64.b64encode(doc).decode(),
        "ct": "application/pidf+xml", "exp": time.time() + 60, "rcv": time.time()}}
    good = CLUSTER_SECRET.encode()
    before = await counters(n1)
    async with peer_link(n1) as peer:  # its hello is seq 1

        def env(*, cluster: str = "fed", ts: float | None = None, receiver: str = "n1", sender: str = "n2",
                nonce: str = peer.nonce) -> Envelope:
            return Envelope(cluster, sender, receiver, nonce, peer.boot, 2, ts if ts is not None else time.time(),
                            "publish", body)

        bad = [
            (seal(b"not-the-cluster-secret-at-all", env()), "forged"),
            (seal(good, env())[:-5] + b"XXXXX", "forged"),  # altered after sealing
            (seal(good, env(cluster="other")), "wrong-cluster"),
            (seal(good, env(receiver="n3")), "misdirected"),
            (seal(good, env(sender="n9")), "unknown-peer"),
            (seal(good, env(ts=time.time() - 3600)), "stale"),
            (seal(good, env(nonce="another-connection")), "replayed"),
            (b"\x00" * 10, "malformed"),
        ]
        for data, _ in bad:
            await peer.send_raw(data)
        rejected = {r: counted(n1, "cluster_messages_rejected_total", reason=r) for _, r in bad}
        await until(lambda: sum(counted(n1, "cluster_messages_rejected_total", reason=r) - rejected[r] for r in rejected)
                    == len(bad))
        await w.round_trip()
        assert len(w.notifies_for(d)) == 1  # nothing applied
        replayable = seal(good, env())
        await peer.send_raw(replayable)  # authentic: applied once
        await w.dialog_notifies(d, 2)
        replayed = counted(n1, "cluster_messages_rejected_total", reason="replayed")
        await peer.send_raw(replayable)  # the same bytes again
        await until(lambda: counted(n1, "cluster_messages_rejected_total", reason="replayed") > replayed)
        await w.round_trip()
    after = await counters(n1)
    for reason in {r for _, r in bad}:
        want = sum(1 for _, r in bad if r == reason) + (reason == "replayed")
        got = metric(after, "cluster_messages_rejected_total", reason=reason) - metric(
            before, "cluster_messages_rejected_total", reason=reason)
        assert got == want, reason
    assert len(w.notifies_for(d)) == 2 and b"injected" in w.notifies_for(d)[1].body


async def test_cluster_view_lists_every_tag_and_peer(federation):
    """Tags are visible cluster-wide: each node's /cluster lists the tags of
    every node, with owners, and which peers are up."""
    nodes = await federation(3)
    async with aiohttp.ClientSession() as s:
        for node in nodes:
            async def view():
                async with s.get(f"http://127.0.0.1:{node.admin_port}/cluster", headers=AUTH) as r:
                    assert r.status == 200
                    return await r.json()

            for _ in range(100):
                v = await view()
                owners = {t["tag"]: t["owner"] for t in v["tags"]}
                if all(owners.get(f"n{i}") == f"n{i}" for i in (1, 2, 3)):
                    break
                await asyncio.sleep(0.05)
            assert all(owners.get(f"n{i}") == f"n{i}" for i in (1, 2, 3)), owners
            assert all(p["up"] for p in v["peers"]) and len(v["peers"]) == 2
            async with s.get(f"http://127.0.0.1:{node.admin_port}/cluster") as r:
                assert r.status == 401  # behind the secret like the rest


async def test_federation_without_a_cluster_secret_does_not_start(monkeypatch, tmp_path):
    from presence_node.admin.secret import SecretError
    from presence_node.config import Config
    from presence_node.node import Node

    monkeypatch.delenv("PRESENCE_CLUSTER_SECRET", raising=False)
    cfg = Config.model_validate({"cluster_id": "fed", "federation": {"mode": "full-sharing"}, "state_dir": str(tmp_path)})
    with pytest.raises(SecretError, match="cluster secret"):
        Node(cfg)


@pytest.fixture
async def redundancy(make_node, cluster_secret_file, pg_server):
    """Federation with redundancy: locations A and B of two nodes each, one
    PostgreSQL database per location, the location's tag active on its
    first node (a1, b1)."""
    from presence_node.storage.postgres import PostgresStorage

    names = ["a1", "a2", "b1", "b2"]
    ports = {n: free_port(["127.0.0.1"]) for n in names}
    dsns = {"A": pg_server.create_database(), "B": pg_server.create_database()}
    nodes = {}
    for name in names:
        loc = name[0].upper()
        nodes[name] = await make_node(
            node_id=name, cluster_id="fed", sharing_tags={loc: "active" if name.endswith("1") else "backup"},
            storage_override=PostgresStorage(dsns[loc]),
            federation={
                "mode": "on-demand-sharing", "listen": f"127.0.0.1:{ports[name]}", "location": loc,
                "secret_file": str(cluster_secret_file), "heartbeat": 0.2, "peer_timeout": 1.0,
                "peers": [{"id": p, "address": f"127.0.0.1:{ports[p]}", "location": p[0].upper()} for p in names if p != name],
            },
        )
    await until(lambda: all(n.federation.peers_up == 3 for n in nodes.values()))
    return nodes


async def test_redundancy_each_notify_once_and_a_partner_covers_a_death(redundancy, make_client):
    """A watcher in location B (through its backup node b2) and a PUBLISH in
    location A (through its backup a2): only b1, where tag B is active, acts
    on the broadcast, so the watcher gets each NOTIFY once.  When b1 dies
    and B is activated on b2, b2 takes over without A noticing beyond the
    tag state."""
    a1, a2, b1, b2 = (redundancy[n] for n in ("a1", "a2", "b1", "b2"))
    w, d = await watch_bob(make_client, b2, a2)
    pub = await make_client("bob", target=a2)
    assert (await pub.publish(pidf(BOB, "open", note="one"))).code == 200
    await w.dialog_notifies(d, 2)
    await asyncio.sleep(0.4)
    assert len(w.notifies_for(d)) == 2  # not twice
    assert metric(await counters(b2), "cluster_messages_ignored_total", reason="backup") >= 1

    # A second watcher in B, through b1, for a presentity held in A: one
    # query, answered by a1 only (a2 is backup for A).
    carol = BOB.replace("bob", "carol")
    assert (await (await make_client("carol", target=a1)).publish(pidf(carol, "open", note="carol"))).code == 200
    w2 = await make_client("dave", target=b1)
    _, d2 = await w2.subscribe(carol)
    [first] = await w2.dialog_notifies(d2, 1)
    assert b"carol" in first.body
    assert sent(await counters(a1), "answer") == 1 and sent(await counters(a2), "answer") == 0

    await b1.stop()
    await b2.tags.activate("B")
    n_before = len(w.notifies_for(d))
    assert (await pub.publish(pidf(BOB, "closed", note="two"))).code == 200
    notes = await w.wait_notifies(n_before + 1, 3.0, lambda m: m.headers.get("call-id") == d.call_id)
    assert b"two" in notes[-1].body
    await asyncio.sleep(0.4)
    assert len(w.notifies_for(d)) == n_before + 1  # once, from b2
    # A heard of it only as tag state: every node of A lists b2 as B's owner.
    for node in (a1, a2):
        await until(lambda: any(t["tag"] == "B" and t["owner"] == "b2" for t in node.federation.view()["tags"]))


async def test_full_sync_in_batches_drops_what_the_peer_no_longer_holds(proxied_pair, make_client):
    """full-sharing, 300 presentities (more than one sync batch): n2 gets
    them all; then, while n1's link to n2 is cut, n1 removes one; after
    healing, the full resync (batches, then the list of every key n1
    holds) removes n2's copy of it."""
    etags = {}

    async def publish_300(n1) -> None:
        pub = await make_client("bob", target=n1)
        for i in range(300):
            uri = f"sip:u{i}@example.com"
            r = await pub.publish(pidf(uri, "open", note=f"u{i}"), uri=uri)
            etags[uri] = (pub, r.headers.get("sip-etag"))

    n1, n2, proxy = await proxied_pair("full-sharing", publish_300)

    async def held_by_n2() -> set[str]:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{n2.admin_port}/presentities?limit=1000", headers=AUTH) as r:
                return {i["presentity"] for i in (await r.json())["items"]}

    for _ in range(100):
        if len(await held_by_n2()) == 300:
            break
        await asyncio.sleep(0.05)
    assert len(await held_by_n2()) == 300
    assert metric(await counters(n1), "cluster_messages_sent_total", kind="sync") >= 3  # 2 batches + the end

    proxy.cut()
    await until(lambda: not n1.federation.channel.connected("n2"))
    pub, etag = etags["sip:u7@example.com"]
    assert (await pub.publish(None, uri="sip:u7@example.com", etag=etag, expires=0)).code == 200
    await asyncio.sleep(0.2)
    assert "u7@example.com" in await held_by_n2()  # the removal was lost
    proxy.heal()
    for _ in range(100):
        if "u7@example.com" not in await held_by_n2():
            break
        await asyncio.sleep(0.05)
    assert await held_by_n2() == {f"u{i}@example.com" for i in range(300)} - {"u7@example.com"}


async def test_authentic_messages_with_bad_bodies_change_nothing(federation, make_client):
    """Sealed with the right secret but malformed inside (wrong types, a
    package not federated, bad base64, an unknown kind): ignored and
    counted, no NOTIFY, nothing stored; the link stays usable."""
    import time

    [n1] = await federation(2, only=[0])
    w = await make_client("alice", target=n1)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    good = {"p": "bob@example.com", "e": "presence", "etag": "n2.x.1", "body": "PHA+", "ct": "application/pidf+xml",
            "exp": time.time() + 60, "rcv": time.time()}
    bodies = [
        ("publish", {"key": "bob@example.com", "old": None, "pub": good}),
        ("publish", {"key": ["bob@example.com", "dialog"], "old": None, "pub": dict(good, e="dialog")}),
        ("publish", {"key": ["bob@example.com", "presence"], "old": None, "pub": dict(good, body="not base64!")}),
        ("publish", {"key": ["bob@example.com", "presence"], "old": 7, "pub": good}),
        ("state", {"location": "n2", "interest": [], "tags": [{"tag": "x", "epoch": "1"}]}),
        ("interest", {"add": [["a@b", "presence", "extra"]], "remove": []}),
        ("teleport", {}),
    ]
    async with peer_link(n1) as peer:
        for kind, body in bodies:
            await peer.send(kind, body)
        await until(lambda: counted(n1, "cluster_messages_ignored_total", reason="unknown-kind") == 1)
        await w.round_trip()
    m = await counters(n1)
    assert metric(m, "cluster_messages_ignored_total", reason="malformed") == 6
    assert metric(m, "cluster_messages_ignored_total", reason="unknown-kind") == 1
    assert len(w.notifies_for(d)) == 1
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{n1.admin_port}/presentities", headers=AUTH) as r:
            assert (await r.json())["items"] == []
    assert n1.federation.interest["n2"] == set() and "n2" not in n1.federation.remote_tags


class FakePeer:
    """The test playing peer ``sender`` on one connection to a node's
    cluster channel, after the node's challenge."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, node, sender: str, nonce: str) -> None:
        import time

        self.ws, self.node, self.sender, self.nonce = ws, node, sender, nonce
        self.boot = int(time.time() * 1000)
        self.seq = 0

    def envelope(self, kind: str, body: dict[str, Any], **fields: Any):
        """The next envelope of the link; ``fields`` override its fields."""
        import dataclasses
        import time

        from presence_node.federation.wire import Envelope

        self.seq += 1
        env = Envelope("fed", self.sender, self.node.config.node_id, self.nonce, self.boot, self.seq, time.time(), kind, body)
        return dataclasses.replace(env, **fields)

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send_bytes(b"\x01" + data)  # one frame: the LAST flag, then the message

    async def send(self, kind: str, body: dict[str, Any], *, secret: bytes = CLUSTER_SECRET.encode(), **fields: Any) -> None:
        from presence_node.federation.wire import seal

        await self.send_raw(seal(secret, self.envelope(kind, body, **fields)))


@contextlib.asynccontextmanager
async def peer_link(node, sender: str = "n2", *, hello: bool = True):
    """A :class:`FakePeer` connected to ``node``'s channel, its hello sent
    (unless ``hello`` is False)."""
    from presence_node.federation.wire import read_challenge

    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{node.federation.channel.port}/cluster") as ws:
            msg = await asyncio.wait_for(ws.receive(), 2.0)
            nonce, _ = read_challenge(msg.data)
            peer = FakePeer(ws, node, sender, nonce)
            if hello:
                await peer.send("hello", {})
            yield peer


def bob_publish(note: str) -> dict[str, Any]:
    """The body of a ``publish`` message of bob's presence, from n2."""
    import base64
    import time

    return {"key": ["bob@example.com", "presence"], "old": None, "pub": {
        "p": "bob@example.com", "e": "presence", "etag": f"n2.{note}.1", "ct": "application/pidf+xml",
        "body": base64.b64encode(pidf(BOB, "open", note=note)).decode(), "exp": time.time() + 60, "rcv": time.time()}}


async def test_a_message_whose_timestamp_is_not_a_number_is_refused(federation, make_client):
    """#12.14: ``ts`` NaN (or infinite) made the skew check pass (every
    comparison with NaN is false); now it is malformed, counted, and
    not applied."""
    [n1] = await federation(2, only=[0])
    w = await make_client("alice", target=n1)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    async with peer_link(n1) as peer:
        await peer.send("publish", bob_publish("nan"), ts=float("nan"))
        await peer.send("publish", bob_publish("inf"), ts=float("inf"))
        await until(lambda: counted(n1, "cluster_messages_rejected_total", reason="malformed") == 2)
        await w.round_trip()
    assert len(w.notifies_for(d)) == 1
    assert metric(await counters(n1), "cluster_messages_rejected_total", reason="malformed") == 2


async def test_a_captured_link_replayed_after_the_receiver_restarts_is_refused(proxied_pair, make_node, cluster_secret_file, make_client):
    """#12.14: an eavesdropper records n1's link to n2 (a PUBLISH of bob in
    it), n2 restarts (its memory of sequence numbers is gone) and the
    recording is played to it within the skew window.  Every message is
    bound to the connection's challenge from the receiver, so nothing of
    it is applied: counted as replayed."""
    n1, n2, proxy = await proxied_pair("full-sharing")
    await until(lambda: n1.federation.channel.connected("n2") and n2.federation.channel.up("n1"))
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="captured"))).code == 200

    async def held(node) -> list[str]:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{node.admin_port}/presentities", headers=AUTH) as r:
                return [i["presentity"] for i in (await r.json())["items"]]

    for _ in range(100):
        if await held(n2):
            break
        await asyncio.sleep(0.05)
    assert await held(n2) == ["bob@example.com"]
    proxy.cut()  # n1 cannot reach the new n2: only the recording will
    await n2.stop()
    n2b = await make_node(node_id="n2", cluster_id="fed", federation={
        "mode": "full-sharing", "listen": f"127.0.0.1:{proxy.target}", "secret_file": str(cluster_secret_file),
        "heartbeat": 0.2, "peer_timeout": 1.0, "peers": [{"id": "n1", "address": f"127.0.0.1:{n1.federation.channel.port}"}]})
    recording = bytes(max(proxy.captured, key=len))
    _, w = await asyncio.open_connection("127.0.0.1", proxy.target)
    w.write(recording)
    await w.drain()
    await asyncio.sleep(0.5)
    w.close()
    assert await held(n2b) == []
    assert metric(await counters(n2b), "cluster_messages_rejected_total", reason="replayed") >= 1


# -- before authentication (#12.9) ----------------------------------------------------


async def raw_connection(port: int, source: str = "127.0.0.1", *, upgrade: bool = False):
    """A TCP connection to a cluster channel from ``source`` (any address of
    127.0.0.0/8), upgraded to a WebSocket by hand when asked, so the test
    can send what no WebSocket library would (a frame cut short)."""
    import base64
    import os

    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        w.write(f"GET /cluster HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 2.0)
        assert b" 101 " in head.split(b"\r\n")[0], head
    return r, w


async def closed_within(r: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the node closed the connection within ``seconds``, whatever
    it sent before."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while (left := end - loop.time()) > 0:
            if not await asyncio.wait_for(r.read(65536), left):
                return True
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


async def test_a_large_frame_before_authentication_closes_the_connection(federation):
    """#12.9: a WebSocket frame announcing 1 MiB from a client that has not
    authenticated (the channel accepted up to 16 MiB, and held what came of
    it) closes the connection at its header, before the payload is read."""
    [n1] = await federation(2, only=[0])
    r, w = await raw_connection(n1.federation.channel.port, upgrade=True)
    w.write(b"\x82\xff" + (1 << 20).to_bytes(8, "big") + b"mask" + b"x" * 4000)  # binary, masked, 1 MiB announced
    assert await closed_within(r, 3.0)
    w.close()
    m = await counters(n1)
    assert metric(m, "cluster_connections_closed_total", reason="frame-too-large") == 1


async def test_a_connection_that_does_not_authenticate_in_time_is_closed(federation):
    """#12.9: a TCP connection that sends nothing, and a WebSocket that
    sends no hello, are closed ``auth_timeout`` after accept; a peer that
    authenticates stays."""
    [n1] = await federation(2, only=[0], auth_timeout=0.5)
    port = n1.federation.channel.port
    silent, w1 = await raw_connection(port)
    upgraded, w2 = await raw_connection(port, upgrade=True)
    async with peer_link(n1):
        assert await closed_within(silent, 3.0) and await closed_within(upgraded, 1.0)
        await asyncio.sleep(0.5)
        assert n1.federation.channel.connections() == {"unauthenticated": 0, "authenticated": 1}
    w1.close()
    w2.close()
    assert metric(await counters(n1), "cluster_connections_closed_total", reason="auth-timeout") == 2


async def test_unauthenticated_connections_are_capped_per_source_and_in_all(federation):
    """#12.9: at most 3 unauthenticated connections from one address and
    5 in all here; beyond, a connection is closed at accept and counted;
    a peer can authenticate once the others have gone."""
    [n1] = await federation(2, only=[0], max_unauthenticated=5, max_unauthenticated_per_source=3, auth_timeout=10)
    port = n1.federation.channel.port
    held = []
    for source, expected in [("127.0.0.1", 3), ("127.0.0.2", 5)]:
        for _ in range(3 if source == "127.0.0.1" else 2):
            held.append(await raw_connection(port, source))
        await until(lambda: n1.federation.channel.connections().get("unauthenticated") == expected)
    over_source, w1 = await raw_connection(port, "127.0.0.1")
    over_total, w2 = await raw_connection(port, "127.0.0.3")
    assert await closed_within(over_source, 2.0) and await closed_within(over_total, 2.0)
    w1.close()
    w2.close()
    assert not any([await closed_within(r, 0.1) for r, _ in held])
    m = await counters(n1)
    assert metric(m, "cluster_connections_refused_total", reason="per-source") == 1
    assert metric(m, "cluster_connections_refused_total", reason="total") == 1
    assert metric(m, "cluster_connections", state="unauthenticated") == 5
    for _, w in held:
        w.close()
    await until(lambda: n1.federation.channel.connections().get("unauthenticated") == 0)
    async with peer_link(n1) as peer:
        await peer.send("heartbeat", {})
        await until(lambda: n1.federation.channel.up("n2"))


async def test_forged_messages_are_counted_each_and_logged_once_per_source(federation, caplog):
    """#12.14: ten connections each sending a forged message: ten counted,
    one warning line (the log is not the attacker's to fill)."""
    import os

    [n1] = await federation(2, only=[0])
    forged = b"\x01" + os.urandom(32) + b'{"v":2}'  # a LAST frame whose MAC is wrong
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            async with s.ws_connect(f"http://127.0.0.1:{n1.federation.channel.port}/cluster") as ws:
                await ws.send_bytes(forged)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.receive(), 1.0)  # the challenge
    await until(lambda: counted(n1, "cluster_messages_rejected_total", reason="forged") >= 10)
    assert metric(await counters(n1), "cluster_messages_rejected_total", reason="forged") == 10
    assert len([r for r in caplog.records if r.getMessage() == "cluster message refused"]) == 1


# -- TLS (#12.14) ---------------------------------------------------------------------


def make_pki(root, name: str) -> dict[str, str]:
    """A CA and a certificate it signed for 127.0.0.1 (server and client
    use), made with the openssl command at test time: no key is committed."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = root / name
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", f"/CN={name}-ca")
    run("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", f"/CN={name}-node")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "node.crt", "-days", "2", "-extfile", "ext")
    return {"tls_cert_file": str(d / "node.crt"), "tls_key_file": str(d / "node.key"), "tls_ca_file": str(d / "ca.crt")}


async def test_tls_channel_federates_and_refuses_plain_and_foreign_clients(federation, make_client, tmp_path):
    """With tls_* set, the channel is TLS both ways (each side's certificate
    checked against the CA file): the federation works as before; a client
    speaking plain HTTP, or one whose certificate another CA signed, is
    dropped during the handshake (counted) without reaching the channel."""
    import ssl

    pki, foreign = make_pki(tmp_path, "cluster"), make_pki(tmp_path, "other")
    n1, n2 = await federation(2, auth_timeout=0.5, **pki)
    w, d = await watch_bob(make_client, n2, n1)
    pub = await make_client("bob", target=n1)
    assert (await pub.publish(pidf(BOB, "open", note="over tls"))).code == 200
    [_, got] = await w.dialog_notifies(d, 2)
    assert b"over tls" in got.body

    port = n1.federation.channel.port
    r, plain = await raw_connection(port)
    plain.write(f"GET /cluster HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert await closed_within(r, 3.0)
    plain.close()
    assert metric(await counters(n1), "cluster_connections_closed_total", reason="tls") == 1
    ctx = ssl.create_default_context(cafile=pki["tls_ca_file"])
    ctx.load_cert_chain(foreign["tls_cert_file"], foreign["tls_key_file"])
    async with aiohttp.ClientSession() as s:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with s.ws_connect(f"https://127.0.0.1:{port}/cluster", ssl=ctx) as ws:
                await ws.receive()
    await until(lambda: n1.federation.channel.connections().get("unauthenticated") == 0)
    assert metric(await counters(n1), "cluster_connections_closed_total", reason="tls") >= 2  # aiohttp tries twice
    # n2's link authenticated over TLS, so auth_timeout did not cut it.
    assert n1.federation.channel.connections() == {"unauthenticated": 0, "authenticated": 1}
    assert metric(await counters(n1), "cluster_connections_closed_total", reason="auth-timeout") == 0


async def test_tls_files_are_read_again_when_they_change(federation, tmp_path):
    """A rotated certificate (new files in place, as a Kubernetes Secret
    update does) serves the next connection, without a restart."""
    import shutil
    import ssl

    pki, rotated = make_pki(tmp_path, "cluster"), make_pki(tmp_path, "rotated")
    [n1] = await federation(2, only=[0], **pki)
    ctx = ssl.create_default_context(cafile=rotated["tls_ca_file"])
    ctx.load_cert_chain(rotated["tls_cert_file"], rotated["tls_key_file"])
    url = f"https://127.0.0.1:{n1.federation.channel.port}/cluster"
    async with aiohttp.ClientSession() as s:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with s.ws_connect(url, ssl=ctx):
                pass
        for key, path in pki.items():
            shutil.copy(rotated[key], path)
        async with s.ws_connect(url, ssl=ctx) as ws:
            assert (await ws.receive()).type == aiohttp.WSMsgType.BINARY  # the challenge: TLS is through


async def test_chunks_only_up_to_max_message_and_one_connection_per_peer(federation):
    """#12.9: an authenticated peer's chunks are reassembled up to
    max_message, beyond which the connection is closed; and a peer's newer
    connection closes its older one (a peer has one)."""
    [n1] = await federation(2, only=[0], max_message=65536)
    async with peer_link(n1) as old:
        # The old link's hello handled first: which link is newer is the
        # order the node authenticates them in, not the order they were sent.
        await eventually(lambda: n1.federation.channel.connections().get("authenticated") == 1, 5.0, "the old link authenticated")
        async with peer_link(n1) as new:
            msg = await asyncio.wait_for(old.ws.receive(), 5.0)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            for _ in range(5):
                await new.ws.send_bytes(b"\x00" + b"x" * 16000)  # MORE: 80 kB and counting
            msg = await asyncio.wait_for(new.ws.receive(), 5.0)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    m = await counters(n1)
    assert metric(m, "cluster_connections_closed_total", reason="replaced") == 1
    assert metric(m, "cluster_connections_closed_total", reason="too-large") == 1
    assert metric(m, "cluster_messages_rejected_total", reason="too-large") == 1


async def test_unreadable_tls_files_stop_start_up_with_a_clear_error(tmp_path, monkeypatch):
    """A missing or bad TLS file is a configuration error at start-up
    (exit code 2), not a failure at the first connection."""
    from presence_node.admin.secret import SecretError
    from presence_node.config import Config
    from presence_node.node import Node

    monkeypatch.setenv("PRESENCE_CLUSTER_SECRET", CLUSTER_SECRET)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    for cert in (tmp_path / "missing.pem", tmp_path / "garbage.pem"):
        cfg = Config.model_validate({"cluster_id": "fed", "state_dir": str(tmp_path), "federation": {
            "mode": "full-sharing", "tls_cert_file": str(cert), "tls_key_file": str(cert), "tls_ca_file": str(cert)}})
        with pytest.raises(SecretError, match="TLS"):
            Node(cfg)
