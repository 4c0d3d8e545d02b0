"""The one-statement PUBLISH and SUBSCRIBE of the PostgreSQL backend
(``insert_publication_watched``, ``insert_subscription_state``, migration
3) do their read before their write commits; the presentity lock keeps a
concurrent PUBLISH and SUBSCRIBE of one presentity from each missing the
other.  Here the other side is an open transaction: the call must wait for
its commit and then see what it wrote."""

from __future__ import annotations

import asyncio

import psycopg

from presence_node.storage import Publication, Subscription
from presence_node.storage.postgres import PostgresStorage

NOW = 1_000_000.0


def sub(i: int, presentity: str = "bob@example.com", event: str = "presence") -> Subscription:
    return Subscription(
        id=f"s{i}", call_id=f"c{i}", remote_tag=f"r{i}", presentity=presentity, event=event, event_header=event,
        event_params="", watcher=f"w{i}@example.com", remote_uri=f"<sip:w{i}@example.com>;tag=r{i}",
        local_uri=f"<sip:{presentity}>", contact=f"sip:w{i}@127.0.0.1:5{i:03d}", routes="", transport="udp",
        source="127.0.0.1:5000", accept="application/pidf+xml", expires_at=NOW + 100, remote_cseq=1, cseq=0,
        version=0, status="active", tag="A",
    )


def pub(etag: str, presentity: str = "bob@example.com") -> Publication:
    return Publication(presentity, "presence", etag, b"<x/>", "application/pidf+xml", NOW + 100, NOW, "A")


async def started(dsn: str) -> PostgresStorage:
    s = PostgresStorage(dsn)
    await s.start()
    await s.ensure_tags({"A": True}, "me", NOW)
    return s


async def publish_uncommitted(conn: psycopg.AsyncConnection) -> None:
    """Bob's publication ``e1``, written by another connection and left
    uncommitted (its transaction holds the presentity's shared lock)."""
    await conn.execute(
        "INSERT INTO publications (presentity, event, etag, body, content_type, expires_at, received_at, tag)"
        " VALUES ('bob@example.com', 'presence', 'e1', '<x/>', 'application/pidf+xml', %s, %s, 'A')",
        (NOW + 100, NOW),
    )


async def still_waiting(task: "asyncio.Future[object]") -> bool:
    await asyncio.sleep(0.3)
    return not task.done()


async def test_subscribe_waits_for_an_uncommitted_publication_and_then_sees_it(pg_dsn):
    s = await started(pg_dsn)
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            await publish_uncommitted(other)
            task = asyncio.ensure_future(s.insert_subscription_state(sub(1), NOW))
            assert await still_waiting(task)
            await other.commit()
            pubs, _ = await asyncio.wait_for(task, 5)
        assert [p.etag for p in pubs] == ["e1"]
    finally:
        await s.close()


async def test_subscribe_waits_for_an_uncommitted_modify_and_removal(pg_dsn):
    s = await started(pg_dsn)
    try:
        await s.insert_publication_watched(pub("e1"), NOW)
        await s.insert_publication_watched(pub("gone"), NOW)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            await other.execute("UPDATE publications SET body = '<y/>' WHERE etag = 'e1'")
            await other.execute("DELETE FROM publications WHERE etag = 'gone'")
            task = asyncio.ensure_future(s.insert_subscription_state(sub(1), NOW))
            assert await still_waiting(task)
            await other.commit()
            pubs, _ = await asyncio.wait_for(task, 5)
        assert [(p.etag, p.body) for p in pubs] == [("e1", b"<y/>")]
    finally:
        await s.close()


async def test_publish_waits_for_an_uncommitted_subscription_and_then_returns_it(pg_dsn):
    s = await started(pg_dsn)
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            # insert_subscription_state in a transaction left open.
            cur = await other.execute(
                "SELECT * FROM presence_subscribe(" + ", ".join(["%s"] * 23) + ")",
                (
                    "s1", "c1", "r1", "bob@example.com", "presence", "presence", "", "w1@example.com", "<sip:w1>",
                    "<sip:bob>", "sip:w1@127.0.0.1", "", "udp", "127.0.0.1:5000", "application/pidf+xml",
                    NOW + 100, 1, 1, 1, "active", "A", NOW, None,
                ),
            )
            await cur.fetchall()
            task = asyncio.ensure_future(s.insert_publication_watched(pub("e1"), NOW))
            assert await still_waiting(task)
            await other.commit()
            watchers = await asyncio.wait_for(task, 5)
        assert [w.id for w in watchers] == ["s1"]
    finally:
        await s.close()


async def test_other_presentities_do_not_wait_and_publications_do_not_wait_for_each_other(pg_dsn):
    s = await started(pg_dsn)
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            await publish_uncommitted(other)
            # Another publication of the same presentity: shared locks.
            await asyncio.wait_for(s.insert_publication_watched(pub("e2"), NOW), 2)
            # A presentity in another bucket.
            row = await s._one(
                "SELECT p FROM generate_series(1, 1000) i, LATERAL (SELECT 'p' || i || '@example.com' AS p) x"
                " WHERE presence_bucket(p) <> presence_bucket('bob@example.com') LIMIT 1"
            )
            assert row is not None
            other_p = row[0]
            await asyncio.wait_for(s.insert_subscription_state(sub(2, other_p), NOW), 2)
            await other.rollback()
    finally:
        await s.close()
