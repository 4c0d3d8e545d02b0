"""The notify queue of the PostgreSQL backend (storage/changes.py, migration
6): a change's watchers read for one node are those it sends to; the others
wait for the owner of their tag, which is woken and takes them, only while
it listens.  A tag whose owner does not listen, or that has none, is the
lowest-named listening node's to send (migration 7), so every node agrees on
one sender; what waited for a sender that went away is taken by the tag's
next sender."""

from __future__ import annotations

import asyncio
import dataclasses

from presence_node.storage.changes import ChangeFeed
from presence_node.storage.postgres import PostgresStorage

from test_pg_presentity_lock import NOW, pub, sub


class Woken:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.tags = 0

    def __call__(self, tags: bool) -> None:
        self.tags += tags
        self.event.set()


async def node(dsn: str, name: str) -> tuple[PostgresStorage, ChangeFeed, Woken]:
    s = PostgresStorage(dsn)
    await s.start()
    # As a node starts: its private tag too (the database's list of nodes).
    await s.ensure_tags({f"~{name}": True, "A": name == "n1", "B": name == "n2"}, name, NOW)
    woken = Woken()
    feed = ChangeFeed(s, name, woken)
    await feed.start()
    assert feed.up
    return s, feed, woken


def watcher(i: int, tag: str):
    return dataclasses.replace(sub(i), tag=tag)


async def test_a_change_is_read_for_the_owner_of_each_tag_and_queued_for_the_others(pg_dsn):
    (s1, f1, w1), (s2, f2, w2) = await node(pg_dsn, "n1"), await node(pg_dsn, "n2")
    try:
        await s1.insert_subscription(watcher(1, "A"))
        await s1.insert_subscription(watcher(2, "B"))
        await asyncio.sleep(0.1)
        w1.event.clear(), w2.event.clear()
        got = await s1.insert_publication_watched(pub("e1"), NOW, "n1")
        assert [w.id for w in got] == ["s1"]
        await asyncio.wait_for(w2.event.wait(), 2)  # n2 is woken, n1 is not
        assert not w1.event.is_set()
        live, ended = await f2.take(NOW)
        assert [w.id for w in live] == ["s2"] and ended == []
        assert await f2.take(NOW) == ([], [])  # taken once
        assert await f1.take(NOW) == ([], [])  # not n1's to take
        # Read unrouted (no sender), every watcher, nothing queued.
        assert sorted(w.id for w in await s1.watchers("bob@example.com", "presence", NOW)) == ["s1", "s2"]
        assert await f2.take(NOW) == ([], [])
    finally:
        for f, s in ((f1, s1), (f2, s2)):
            await f.close()
            await s.close()


async def test_an_unattended_tag_is_sent_for_by_the_lowest_named_listening_node_only(pg_dsn):
    """S09 with a dead owner: n3 owns C but does not listen; n2 reads a
    change, and the watcher under C is queued for n1, not read for n2, so
    two nodes seeing changes at once do not both send."""
    (s1, f1, w1), (s2, f2, _) = await node(pg_dsn, "n1"), await node(pg_dsn, "n2")
    s3 = PostgresStorage(pg_dsn)
    await s3.start()
    try:
        await s3.ensure_tags({"~n3": True, "C": True}, "n3", NOW)  # n3 never listens
        await s2.insert_subscription(watcher(1, "C"))
        await asyncio.sleep(0.1)
        w1.event.clear()
        assert await s2.watchers("bob@example.com", "presence", NOW, "n2") == []
        await asyncio.wait_for(w1.event.wait(), 2)
        assert await f2.take(NOW) == ([], [])
        live, _ = await f1.take(NOW)
        assert [w.id for w in live] == ["s1"]
        assert await f2.pass_on(["s1"]) == set()  # a refresh's NOTIFY too
        assert [w.id for w in (await f1.take(NOW))[0]] == ["s1"]
        await f1.close()  # n1 stops listening: n2 is the lowest listening node
        for _ in range(100):
            got = await s2.watchers("bob@example.com", "presence", NOW, "n2")
            if got:
                break
            await asyncio.sleep(0.05)
        assert [w.id for w in got] == ["s1"]
    finally:
        for f, s in ((f1, s1), (f2, s2)):
            await f.close()
            await s.close()
        await s3.close()


async def test_an_owner_that_does_not_listen_leaves_its_watchers_to_the_reader(pg_dsn):
    """The reader, n1, is here the lowest-named listening node."""
    (s1, f1, _), (s2, f2, _) = await node(pg_dsn, "n1"), await node(pg_dsn, "n2")
    try:
        await s1.insert_subscription(watcher(1, "A"))
        await s1.insert_subscription(watcher(2, "B"))
        await f2.close()  # n2 stops listening (its connection, and lock, gone)
        # Until the server has ended n2's session, its lock still says it listens.
        for _ in range(100):
            got = await s1.watchers("bob@example.com", "presence", NOW, "n1")
            if len(got) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(w.id for w in got) == ["s1", "s2"]
        await s2.deactivate_tag("B", "n2", NOW)  # no owner at all: the same
        got = await s1.watchers("bob@example.com", "presence", NOW, "n1")
        assert sorted(w.id for w in got) == ["s1", "s2"]
        # Passing a NOTIFY on, or ending a subscription, for such a tag
        # leaves it to the caller too.
        assert await f1.pass_on(["s2"]) == {"s2"}
        removed, handed = await f1.end("s2", "timeout")
        assert removed is not None and removed.id == "s2" and not handed
    finally:
        await f1.close()
        await s1.close()
        await s2.close()


async def test_what_waited_for_a_sender_gone_since_is_taken_by_the_next_sender(pg_dsn):
    """While B's owner n2 does not listen, the lowest-named listening node
    (n1) sends B's NOTIFYs, before any failover: it takes what n2 left."""
    (s1, f1, w1), (s2, f2, _) = await node(pg_dsn, "n1"), await node(pg_dsn, "n2")
    try:
        await s1.insert_subscription(watcher(1, "B"))
        await s1.insert_subscription(watcher(2, "B"))
        assert await s1.watchers("bob@example.com", "presence", NOW, "n1") == []  # queued for n2
        assert await f1.pass_on(["s1"]) == set()
        removed, handed = await f1.end("s2", "timeout")  # n2 sends the terminated NOTIFY
        assert removed is not None and handed
        await f2.close()  # n2 dies before taking any of it
        await s2.close()
        for _ in range(100):  # until the server has ended n2's LISTEN session
            live, ended = await f1.take(NOW)
            if live or ended:
                break
            await asyncio.sleep(0.05)
        assert [w.id for w in live] == ["s1", "s1"]  # the change and the refresh
        assert [(e.id, reason) for e, reason in ended] == [("s2", "timeout")]
        w1.tags = 0
        await s1.activate_tag("B", "n1", NOW)  # failover of B to n1
        for _ in range(40):
            if w1.tags:
                break
            await asyncio.sleep(0.05)
        assert w1.tags  # every node hears of a tag changing owner
        assert await f1.take(NOW) == ([], [])
    finally:
        await f1.close()
        await s1.close()


async def test_s09_a_sender_that_lost_the_tag_counts_no_more_cseqs_and_passes_the_notify_on(pg_dsn):
    """Handover: n1 stands in for B while its owner n2 does not listen, and
    reads a change's watchers; n2 listens again before n1 counts their
    CSeqs.  n1's count is refused and the NOTIFY passed to n2 instead, so
    the two never send CSeqs of one dialog side by side."""
    (s1, f1, _), (s2, f2, w2) = await node(pg_dsn, "n1"), await node(pg_dsn, "n2")
    try:
        await s1.insert_subscription(watcher(1, "B"))
        await f2.close()  # n2 stops listening: n1 stands in
        for _ in range(100):
            got = await s1.watchers("bob@example.com", "presence", NOW, "n1")
            if got:
                break
            await asyncio.sleep(0.05)
        assert [w.id for w in got] == ["s1"]
        f2 = ChangeFeed(s2, "n2", w2)
        await f2.start()  # n2 listens again
        assert f2.up
        numbers, _ = await s1.next_notify_state(["s1"], "bob@example.com", "presence", NOW)
        assert numbers == {}
        assert await s1.next_notify(["s1"]) == {}
        assert await f1.pass_on(["s1"]) == set()  # what n1 does with it: n2's now
        live, _ = await f2.take(NOW)
        assert [w.id for w in live] == ["s1"]
        numbers, _ = await s2.next_notify_state(["s1"], "bob@example.com", "presence", NOW)
        assert numbers == {"s1": (1, 0)}
    finally:
        for f, s in ((f1, s1), (f2, s2)):
            await f.close()
            await s.close()
