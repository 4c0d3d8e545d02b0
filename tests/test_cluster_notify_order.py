"""One sender per subscription on a shared database (issue 13.1).

Two nodes on one real PostgreSQL, in one event loop, over real sockets.
Only the owner of a subscription's sharing tag sends its NOTIFYs, whichever
node received the request that caused them, so the NOTIFYs of one dialog
leave one node, one at a time (D7), in CSeq order (S09: a watcher answers
a lower CSeq with 500, and some phones then drop the dialog).  An owner
that does not listen (dead, stopped, its connection cut) or no owner at all
leaves them to one agreed node, the lowest-named listening one; only when
no node listens does the node that handles the change send."""

from __future__ import annotations

import asyncio
import contextlib
import re

import psycopg
import pytest

from bodies import pidf
from presence_node.storage.postgres import PostgresStorage
from sipclient import Dialog, SipClient
from test_cluster_failover import Cluster, open_client
from wire import cseq_num, parse_metrics, sub_state

BOB = "sip:bob@example.com"
LB = ({"n1": "active", "n2": "backup"}, {"n1": "backup", "n2": "active"})
HA = ({"vip": "active"}, {"vip": "backup"})


@pytest.fixture
async def cluster(make_node, pg_dsn):
    async def start(mode: str):
        tags = LB if mode == "lb" else HA
        return [
            await make_node(
                node_id=f"n{i + 1}", cluster_id="c1", sharing_tags=t,
                default_tag=f"n{i + 1}" if mode == "lb" else "vip", storage_override=PostgresStorage(pg_dsn),
            )
            for i, t in enumerate(tags)
        ]

    return start


def body(publisher: str, note: str) -> bytes:
    # One tuple per publisher, so the composed document shows every one.
    return pidf("bob", note=note).replace(b't-bob"', f't-{publisher}"'.encode())


def inversions(cseqs: list[int]) -> int:
    """NOTIFYs with a lower CSeq than one received before (a retransmission,
    the same CSeq again, is not one)."""
    out, top = 0, 0
    for c in cseqs:
        if c < top:
            out += 1
        top = max(top, c)
    return out


def address(node) -> tuple[str, int]:
    return ("127.0.0.1", node.sip_port)


async def watch(make_client, node, user: str) -> tuple[SipClient, Dialog]:
    w = await make_client(user, target=node)
    resp, d = await w.subscribe(BOB)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    return w, d


async def last_note_is(w: SipClient, d: Dialog, notes: list[str], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        got = w.notifies_for(d)
        if got and all(n.encode() in got[-1].body for n in notes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"last NOTIFY lacks {notes}: {got[-1].body if got else None!r}")


@pytest.mark.parametrize("mode", ["lb", "ha"])
async def test_s09_two_publishers_on_two_nodes_never_invert_a_dialogs_cseq(cluster, make_client, mode):
    """Publishers of one presentity PUBLISH at once through both nodes; a
    watcher subscribed through each node.  Every NOTIFY of a dialog comes
    from the owner of its tag, in CSeq order, and the last one carries the
    last state of every publisher (D7, S56, cluster-wide)."""
    a, b = await cluster(mode)
    watchers = [await watch(make_client, a, "wa"), await watch(make_client, b, "wb")]
    rounds = 500
    publishers = [(f"p{i}", await make_client("bob", target=(a, b)[i % 2])) for i in range(4)]

    async def publish(name: str, c: SipClient) -> None:
        r = await c.publish(body(name, f"{name}-0-end"))
        etag = r.headers.get("sip-etag")
        for i in range(1, rounds + 1):
            r = await c.publish(body(name, f"{name}-{i}-end"), etag=etag)
            assert r.code == 200
            etag = r.headers.get("sip-etag")

    await asyncio.gather(*(publish(n, c) for n, c in publishers))
    final = [f"{n}-{rounds}-end" for n, _ in publishers]
    for w, d in watchers:
        await last_note_is(w, d, final)
    await asyncio.sleep(0.3)  # anything still in flight arrives too
    owners = [address(a), address(b)] if mode == "lb" else [address(a), address(a)]
    total = 0
    for (w, d), owner in zip(watchers, owners):
        notes = w.notifies_for(d)
        total += len(notes)
        assert inversions([cseq_num(n) for n in notes]) == 0
        assert set(w.senders_for(d)) == {owner}
    assert total >= 1000  # enough NOTIFYs for a race to show (D7 merges the rest)


async def test_notifies_follow_the_tag_to_its_new_owner(cluster, make_client):
    a, b = await cluster("lb")
    w, d = await watch(make_client, b, "alice")  # tag n2, owned by b
    pa = await make_client("bob", target=a)
    pb = await make_client("bob", target=b)
    etag = (await pa.publish(body("p", "one"))).headers.get("sip-etag")
    await last_note_is(w, d, ["one"])
    assert w.senders_for(d) == [address(b)] * 2

    await a.tags.activate("n2")  # failover of n2 to a
    etag = (await pb.publish(body("p", "two"), etag=etag)).headers.get("sip-etag")
    await last_note_is(w, d, ["two"])
    assert w.senders_for(d)[2:] == [address(a)]

    # While nobody owns n2 the lowest-named listening node, n1, sends its
    # NOTIFYs, even those of a change seen by n2: every node agrees on it.
    await a.tags.deactivate("n2")
    etag = (await pb.publish(body("p", "three"), etag=etag)).headers.get("sip-etag")
    await last_note_is(w, d, ["three"])
    assert w.senders_for(d)[3:] == [address(a)]

    await b.tags.activate("n2")
    await pa.publish(body("p", "four"), etag=etag)
    await last_note_is(w, d, ["four"])
    assert w.senders_for(d)[4:] == [address(b)]
    assert [cseq_num(n) for n in w.notifies_for(d)] == [1, 2, 3, 4, 5]


async def test_ha_requests_through_the_backup_are_notified_by_the_active_node(cluster, make_client):
    """The first NOTIFY of a SUBSCRIBE, the NOTIFYs of a PUBLISH and of a
    refresh, and the terminated NOTIFY of an unsubscribe, all received by
    the backup: each sent by the owner of vip, CSeq rising by one."""
    a, b = await cluster("ha")
    w = await make_client("alice", target=b)
    resp, d = await w.subscribe(BOB)
    assert resp.code == 200
    [first] = await w.dialog_notifies(d, 1)
    assert cseq_num(first) == 1
    pub = await make_client("bob", target=b)
    assert (await pub.publish(body("p", "via-backup"))).code == 200
    await last_note_is(w, d, ["via-backup"])
    assert (await w.resubscribe(d, 600)).code == 200
    await w.dialog_notifies(d, 3)
    assert (await w.resubscribe(d, 0)).code == 200
    notes = await w.dialog_notifies(d, 4)
    assert sub_state(notes[-1]) == ("terminated", {"reason": "timeout"})
    assert [cseq_num(n) for n in notes] == [1, 2, 3, 4]
    assert w.senders_for(d) == [address(a)] * 4
    await asyncio.sleep(0.3)
    assert len(w.notifies_for(d)) == 4
    m = parse_metrics((await a.metrics_text()).decode())
    assert m[("presence_notify_queue_taken_total", (("kind", "notify"),))] >= 3
    assert m[("presence_notify_queue_taken_total", (("kind", "terminated"),))] == 1


async def test_ha_backup_serves_a_dialog_itself_while_the_active_node_is_down(cluster, make_client):
    """An owner that does not listen (here stopped, vip not moved) leaves
    its dialogs to the lowest-named listening node, here the backup (the
    watchers are not left silent until a failover, S80)."""
    a, b = await cluster("ha")
    await a.stop()
    w = await make_client("alice", target=b)
    resp, d = await w.subscribe(BOB)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    pub = await make_client("bob", target=b)
    assert (await pub.publish(body("p", "owner-down"))).code == 200
    await last_note_is(w, d, ["owner-down"])
    assert (await w.resubscribe(d, 0)).code == 200
    notes = await w.dialog_notifies(d, 3)
    assert [cseq_num(n) for n in notes] == [1, 2, 3] and sub_state(notes[-1])[0] == "terminated"
    assert w.senders_for(d) == [address(b)] * 3


async def listening(node) -> bool:
    return re.search(r"^presence_notify_listener_up 1\.0$", (await node.metrics_text()).decode(), re.M) is not None


async def test_a_lost_listen_connection_loses_no_notify(cluster, make_client, pg_dsn):
    """The owner is woken through its LISTEN connection.  While every
    node's is cut the node that sees a change sends it; once the owner listens again
    (re-connected), it sends again."""
    a, b = await cluster("lb")
    w, d = await watch(make_client, b, "alice")
    assert await listening(a) and await listening(b)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query ILIKE '%pg_advisory_lock%' AND pid <> pg_backend_pid()"
        )
        assert len(await cur.fetchall()) == 2  # one per node
    pub = await make_client("bob", target=a)
    etag = (await pub.publish(body("p", "while-cut"))).headers.get("sip-etag")
    await last_note_is(w, d, ["while-cut"], timeout=3.0)
    for _ in range(100):
        if await listening(b):
            break
        await asyncio.sleep(0.05)
    assert await listening(b)
    assert (await pub.publish(body("p", "listening-again"), etag=etag)).code == 200
    await last_note_is(w, d, ["listening-again"])
    assert w.senders_for(d)[-1] == address(b)
    assert [cseq_num(n) for n in w.notifies_for(d)] == [1, 2, 3]


async def test_s09_no_inversion_while_the_owner_is_killed_again_and_again(tmp_path, pg_dsn):
    """Real node processes: n1, n2, n3 load-balance; two publishers of one
    presentity publish at once through n2 and n3 while n1, the owner of a
    third of the watchers' tags, is SIGKILLed and restarted again and
    again (its tag is never moved).  While n1 is dead or not yet listening
    its dialogs are still served (S80), by one agreed node at a time, and
    when n1 listens again it carries on after that node: no watcher ever
    receives a lower CSeq than one it received before (S09), and every
    watcher ends with the last state of both publishers (D7, S56)."""
    names = ("n1", "n2", "n3")

    def tags(node: str) -> dict[str, str]:
        return {t: "active" if t == node else "backup" for t in names}

    async with contextlib.AsyncExitStack() as stack:
        cluster = Cluster(tmp_path, pg_dsn, stack)
        stack.callback(lambda: [c.close() for c in cluster.__dict__.get("clients", [])])
        for n in names:
            await cluster.start(n, tags(n), default_tag=n)
        watchers: list[tuple[SipClient, Dialog]] = []
        for i in range(9):
            w = await open_client(cluster, names[i % 3], f"w{i}")
            resp, d = await w.subscribe(BOB)
            assert resp.code == 200
            await w.dialog_notifies(d, 1)
            watchers.append((w, d))
        publishers = [(f"p{i}", await open_client(cluster, n, "bob")) for i, n in enumerate(("n2", "n3"))]
        kills = 3
        done = asyncio.Event()
        rounds = {name: 0 for name, _ in publishers}

        async def publish(name: str, c: SipClient) -> None:
            etag = None
            while not done.is_set() or rounds[name] < 200:
                r = await c.publish(body(name, f"{name}-{rounds[name] + 1}-end"), etag=etag)
                if r.code == 503:  # overloaded (a loaded test machine): as told, later
                    await asyncio.sleep(0.1)
                    continue
                assert r.code == 200
                rounds[name] += 1
                etag = r.headers.get("sip-etag")

        async def killer() -> None:
            try:
                for _ in range(kills):
                    await asyncio.sleep(1.0)
                    await cluster.nodes["n1"].kill()
                    await asyncio.sleep(1.0)
                    await cluster.start("n1", tags("n1"), default_tag="n1")
            finally:
                done.set()

        await asyncio.gather(killer(), *(publish(n, c) for n, c in publishers))
        final = [f"{n}-{rounds[n]}-end" for n, _ in publishers]
        for w, d in watchers:
            await last_note_is(w, d, final, timeout=10.0)
        await asyncio.sleep(0.5)  # anything still in flight arrives too
        counts = [inversions([cseq_num(n) for n in w.notifies_for(d)]) for w, d in watchers]
        total = sum(len(w.notifies_for(d)) for w, d in watchers)
        assert counts == [0] * len(watchers), (counts, total)
        assert total >= 1000, total
