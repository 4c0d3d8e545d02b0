"""Two or three nodes on one real PostgreSQL (fallback2db), in one event
loop, over real sockets: S77–S80 and the cross-node consistency rules of
the shared-database modes.  The process-level failover scenarios (SIGKILL,
restarts) are in test_cluster_failover.py."""

from __future__ import annotations

import asyncio
import re

import psycopg
import pytest

from bodies import NS, PIDF_NS, eventually, pidf, xml
from presence_node.storage.postgres import PostgresStorage
from wire import cseq_num, expire, parse_metrics, sub_state

BOB = "sip:bob@example.com"


@pytest.fixture
async def cluster(make_node, pg_dsn):
    """Nodes sharing one database; tag ``vip`` active on n1 (HA form)."""

    async def start(*tags_per_node: dict[str, str], default_tags: list[str] | None = None, **extra):
        nodes = []
        for i, tags in enumerate(tags_per_node):
            default = (default_tags or [None] * len(tags_per_node))[i]
            node = await make_node(
                node_id=f"n{i + 1}", cluster_id="c1", sharing_tags=tags, default_tag=default,
                storage_override=PostgresStorage(pg_dsn), **extra,
            )
            nodes.append(node)
        return nodes

    return start


async def test_s77_publish_on_one_node_reaches_watcher_of_another(cluster, make_client):
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    watcher = await make_client("alice", target=b)
    resp, d = await watcher.subscribe(BOB)
    assert resp.code == 200
    await watcher.dialog_notifies(d, 1)
    pub = await make_client("bob", target=a)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await pub.publish(pidf(BOB, "open", note="from A"))).code == 200
    [_, n] = await watcher.dialog_notifies(d, 2, timeout=2.0)
    assert loop.time() - t0 < 2.0  # D6 bound
    root = xml(n)
    assert root.tag == f"{{{PIDF_NS}}}presence" and b"from A" in n.body
    # The document is the same whichever node composes it.
    other = await make_client("carol", target=a)
    _, d2 = await other.subscribe(BOB)
    [first] = await other.dialog_notifies(d2, 1)
    assert first.body == n.body


async def test_s78_etag_from_one_node_is_honoured_by_another(cluster, make_client):
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    ca = await make_client("bob", target=a)
    cb = await make_client("bob", target=b)
    r1 = await ca.publish(pidf(BOB))
    e1 = r1.headers.get("sip-etag")
    r2 = await cb.publish(None, etag=e1)  # refresh through B
    assert r2.code == 200 and (e2 := r2.headers.get("sip-etag")) not in (None, e1)
    r3 = await ca.publish(pidf(BOB, "closed"), etag=e2)  # modify through A
    assert r3.code == 200 and (e3 := r3.headers.get("sip-etag")) not in (e1, e2)
    assert (await cb.publish(None, etag=e1)).code == 412  # spent etag
    r4 = await cb.publish(None, etag=e3, expires=0)  # remove through B
    assert r4.code == 200
    assert a.config.node_id in e1 and b.config.node_id in e2  # etags carry the issuing node


async def test_s79_refresh_and_unsubscribe_through_another_node_keep_cseq_rising(cluster, make_client):
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    w_a = await make_client("alice", target=a)
    resp, d = await w_a.subscribe(BOB)
    await w_a.dialog_notifies(d, 1)
    w_b = await make_client("alice", target=b)
    # The same dialog, now sent to B (a load balancer moved it); its new
    # Contact (w_b's socket) is where NOTIFYs go from now on.
    r = await w_b.resubscribe(d, 600)
    assert r.code == 200
    await w_b.dialog_notifies(d, 1)
    pub = await make_client("bob", target=a)
    await pub.publish(pidf(BOB))
    await w_b.dialog_notifies(d, 2)
    r = await w_b.resubscribe(d, 0)
    assert r.code == 200
    notes = w_a.notifies_for(d) + await w_b.dialog_notifies(d, 3)
    assert [cseq_num(n) for n in notes] == [1, 2, 3, 4]
    assert sub_state(notes[-1])[0] == "terminated"
    assert (await w_b.resubscribe(d, 600)).code == 481


async def test_s79_winfo_versions_rise_by_one_across_nodes(cluster, make_client):
    """S61/S63 across nodes: three presence watchers subscribe, back to
    back, through B, A, B; bob's winfo subscription is owned by A.

    The number of NOTIFYs is not fixed: a change seen by B reaches A as
    "notify this subscription" through the database queue (owners.py), and
    A sends the full current state for it; changes that meet in one take,
    or that arrive while a NOTIFY is in flight (D7), go out as one full
    document.  RFC 3858 §4 allows that: ``version`` rises by exactly one
    per document sent, a ``full`` document replaces what the subscriber
    holds, a ``partial`` one updates the watchers it names.  So this checks
    what the RFC requires of what arrives: versions 0, 1, 2, ... with no gap
    or repeat, a full first document (S60), every watcher named with
    status active and event subscribe (S63), and the watcher list the
    subscriber computes from them holding exactly the three."""
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    owner = await make_client("bob", target=a)
    _, wd = await owner.subscribe(BOB, event="presence.winfo")
    await owner.dialog_notifies(wd, 1)
    expected = set()
    for i, node in enumerate((b, a, b)):
        w = await make_client(f"w{i}", target=node)
        resp, _ = await w.subscribe(BOB)
        assert resp.code == 200
        expected.add(f"sip:w{i}@example.com")

    def computed() -> dict[str, tuple[str, str]]:
        """RFC 3858 §4: the watcher list as the subscriber computes it."""
        held: dict[str, tuple[str, str]] = {}
        for n in sorted(owner.notifies_for(wd), key=cseq_num):
            root = xml(n)
            if root.get("state") == "full":
                held = {}
            for w in root.iterfind("w:watcher-list/w:watcher", NS):
                held[w.text] = (w.get("status"), w.get("event"))
        return held

    await eventually(lambda: computed().keys() == expected, timeout=10.0)
    notes = sorted(owner.notifies_for(wd), key=cseq_num)
    versions = [int(xml(n).get("version")) for n in notes]
    assert versions == list(range(len(notes))), versions
    assert xml(notes[0]).get("state") == "full"
    assert computed() == dict.fromkeys(expected, ("active", "subscribe"))


async def test_s79_one_terminated_notify_on_expiry_with_every_node_sweeping(cluster, make_client, clock):
    a, b, c = await cluster({"vip": "active"}, {"vip": "backup"}, {"vip": "backup"})
    w = await make_client("alice", target=b)
    resp, d = await w.subscribe(BOB, expires=1)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    clock.advance(1.1)
    notes = await w.dialog_notifies(d, 2)
    for _ in range(5):  # every node sweeps 5 times more (what they send, they send before the sweep returns)
        for n in (a, b, c):
            await expire(n, clock, 0.2)
    await w.round_trip()
    notes = w.notifies_for(d)
    assert len(notes) == 2 and sub_state(notes[1]) == ("terminated", {"reason": "timeout"})


async def test_s45_concurrent_modifies_of_one_etag_through_two_nodes(cluster, make_client):
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    ca = await make_client("bob", target=a)
    etag = (await ca.publish(pidf(BOB))).headers.get("sip-etag")
    clients = [await make_client("bob", target=(a, b)[i % 2]) for i in range(8)]
    codes = await asyncio.gather(*(c.publish(pidf(BOB, note=f"v{i}"), etag=etag) for i, c in enumerate(clients)))
    assert sorted(r.code for r in codes) == [200] + [412] * 7


async def test_backup_node_expires_nothing(cluster, make_client, clock):
    """Only the owner of a tag performs timer-driven duties: with vip owned
    by a node that is not running, nothing expires (OpenSIPS #1848)."""
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    w = await make_client("alice", target=b)
    _, d = await w.subscribe(BOB, expires=1)
    await w.dialog_notifies(d, 1)
    await a.stop()  # the owner goes away without handing vip over
    for _ in range(5):
        await expire(b, clock, 0.4)  # the backup's sweeps, long past the expiry
    await w.round_trip()
    assert len(w.notifies_for(d)) == 1  # no terminated NOTIFY from the backup
    rows = await b.storage.list_subscriptions(0, presentity=None, watcher=None, event=None, offset=0, limit=10)
    assert [s.id for s in rows] == [d.to_tag]  # still stored for the next owner
    await b.tags.activate("vip")
    notes = await w.dialog_notifies(d, 2, timeout=3.0)
    assert sub_state(notes[1])[0] == "terminated"


async def test_failed_notify_seen_by_a_non_owner_keeps_the_subscription(cluster, make_client):
    """OpenSIPS #2170: a 481 to a NOTIFY that a backup node sent (say a load
    balancer could not route it) must not delete the shared subscription."""
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    w = await make_client("alice", target=a)
    _, d = await w.subscribe(BOB)
    await w.dialog_notifies(d, 1)
    w.notify_answer = 481
    # A backup sends only while the owner does not listen for its NOTIFYs.
    assert a.owners is not None and a.owners.queue is not None
    await a.owners.queue.close()
    # Its LISTEN session ends on the server a moment after the close: until
    # then the database still counts it as listening and queues for it.
    async with await psycopg.AsyncConnection.connect(a.storage.dsn, autocommit=True) as conn:
        for _ in range(100):
            listening = (await (await conn.execute("SELECT presence_listening(%s)", (a.config.node_id,))).fetchone())[0]
            if not listening:
                break
            await asyncio.sleep(0.05)
        assert not listening, "the closed LISTEN session still holds its lock"
    pub = await make_client("bob", target=b)
    await pub.publish(pidf(BOB))  # B notifies; the watcher answers 481
    await w.dialog_notifies(d, 2)
    await asyncio.sleep(0.3)
    assert await a.storage.subscription(d.to_tag) is not None
    # The owner seeing a 481 removes it (S26); it sends once it listens again.
    await a.owners.queue.start()
    for _ in range(100):
        if a.owners.listening:
            break
        await asyncio.sleep(0.05)
    pa = await make_client("bob", target=a)
    await pa.publish(pidf(BOB, "closed"))
    await w.dialog_notifies(d, 3)
    for _ in range(40):
        if await a.storage.subscription(d.to_tag) is None:
            break
        await asyncio.sleep(0.05)
    assert await a.storage.subscription(d.to_tag) is None


async def test_simultaneous_activation_leaves_exactly_one_owner(cluster):
    a, b = await cluster({"vip": "backup"}, {"vip": "backup"})
    results = await asyncio.gather(a.tags.activate("vip"), b.tags.activate("vip"))
    tags = {t.name: t for t in await a.tags.list()}
    assert tags["vip"].owner in ("n1", "n2")
    assert tags["vip"].epoch == 2 == max(r.epoch for r in results)
    views_b = {t.name: t for t in await b.tags.list()}
    assert [tags["vip"].state, views_b["vip"].state].count("active") == 1


async def test_restart_with_active_config_does_not_take_a_live_owners_tag(cluster, make_node, pg_dsn):
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    await b.tags.activate("vip")  # failover to n2, epoch 2
    await a.stop()
    again = await make_node(
        node_id="n1", cluster_id="c1", sharing_tags={"vip": "active"}, storage_override=PostgresStorage(pg_dsn)
    )
    tags = {t.name: t for t in await again.tags.list()}
    assert tags["vip"].owner == "n2" and tags["vip"].state == "backup" and tags["vip"].epoch == 2


async def test_s80_a_stopping_node_on_the_shared_database_hands_nothing_off(cluster, make_client):
    """S80, the served-on branch: with a shared database the other nodes
    serve a stopped node's subscriptions, so it sends no deactivated
    NOTIFY and the watcher keeps getting changes through the survivor."""
    a, b = await cluster({"vip": "active"}, {"vip": "backup"})
    watcher = await make_client("alice", target=a)
    _, d = await watcher.subscribe(BOB)
    await watcher.dialog_notifies(d, 1)
    await a.stop()
    assert len(watcher.notifies_for(d)) == 1
    pub = await make_client("bob", target=b)
    assert (await pub.publish(pidf(BOB, "open", note="via b"))).code == 200
    [_, n] = await watcher.dialog_notifies(d, 2)
    assert sub_state(n)[0] == "active" and b"via b" in n.body


async def test_concurrent_requests_share_statements_and_each_gets_its_own_answer(cluster, make_client):
    """Group commit seen from SIP: PUBLISHes and SUBSCRIBEs sent at once to
    one node share database statements (its metrics count them), and every
    request still gets its own answer: each watcher's first NOTIFY carries
    exactly its presentity's note.

    Overload control is set as lax as it goes: with its defaults (20 ms
    target, 0.1 s interval) a burst of 40 on a CPU-starved machine is a
    standing queue, and the node rightly sheds part of it with 503
    Retry-After (test_overload.py tests that); here every request must be
    carried, so that what is checked is the batching."""
    [a] = await cluster(
        {"vip": "active"}, default_tags=["vip"], limits={"overload_target": 10.0, "overload_interval": 10.0}
    )
    n = 40
    publishers = [await make_client(f"u{i}", target=a) for i in range(n)]
    answers = await asyncio.gather(
        *(c.publish(pidf(f"sip:u{i}@example.com", "open", note=f"note-{i}-end")) for i, c in enumerate(publishers))
    )
    assert [r.code for r in answers] == [200] * n
    watchers = [await make_client(f"w{i}", target=a) for i in range(n)]
    subscribed = await asyncio.gather(*(w.subscribe(f"sip:u{i}@example.com") for i, w in enumerate(watchers)))
    for i, (w, (resp, d)) in enumerate(zip(watchers, subscribed)):
        assert resp.code == 200
        first = (await w.dialog_notifies(d, 1))[0]  # (a slow 200 may bring a retransmission)
        notes = re.findall(rb"note-\d+-end", first.body)
        assert notes == [f"note-{i}-end".encode()], (i, notes)
    m = parse_metrics((await a.metrics_text()).decode())
    for kind in ("publish", "subscribe"):
        batches = m[("storage_batches_total", (("kind", kind),))]
        carried = m[("storage_batched_requests_total", (("kind", kind),))]
        assert 0 < batches < carried <= n, kind
        assert m[("storage_batch_retries_total", (("kind", kind),))] == 0
        assert ("storage_batch_overdue_total", (("kind", kind),)) in m
