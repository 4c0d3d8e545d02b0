"""The notify queue of the PostgreSQL backend (storage/changes.py, migration
6): a change's watchers read for one node are those it sends to; the others
wait for the owner of their tag, which is woken and takes them, only while
it listens.  A tag whose owner does not listen, or that has none, is the
reading node's to send; what waited for an owner that went away is taken by
the tag's next owner."""

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
    await s.ensure_tags({"A": name == "n1", "B": name == "n2"}, name, NOW)
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


async def test_an_owner_that_does_not_listen_leaves_its_watchers_to_the_reader(pg_dsn):
    (s1, f1, _), (s2, f2, _) = await node(pg_dsn, "n1"), await node(pg_dsn, "n2")
    try:
        await s1.insert_subscription(watcher(1, "A"))
        await s1.insert_subscription(watcher(2, "B"))
        await f2.close()  # n2 stops listening (its connection, and lock, gone)
        got = await s1.watchers("bob@example.com", "presence", NOW, "n1")
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


async def test_what_waited_for_an_owner_gone_since_is_taken_by_the_next_owner(pg_dsn):
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
        assert await f1.take(NOW) == ([], [])
        w1.tags = 0
        await s1.activate_tag("B", "n1", NOW)  # failover of B to n1
        for _ in range(40):
            if w1.tags:
                break
            await asyncio.sleep(0.05)
        assert w1.tags  # every node hears of a tag changing owner
        live, ended = await f1.take(NOW)
        assert [w.id for w in live] == ["s1", "s1"]  # the change and the refresh
        assert [(e.id, reason) for e, reason in ended] == [("s2", "timeout")]
    finally:
        await f1.close()
        await s1.close()
