"""Group commit in the PostgreSQL backend (storage/batching.py, migration
4): initial PUBLISHes and SUBSCRIBEs that arrive while the database is busy
share a statement.  Each request still gets exactly its own answer; one bad
request fails alone; two nodes batching over the same presentities in
opposite orders neither deadlock nor miss each other (the bucket locks are
taken in order before anything else)."""

from __future__ import annotations

import asyncio

import psycopg

from presence_node.storage import Publication, StorageUnavailable
from presence_node.storage.schema import PRESENTITY_LOCK

from test_pg_presentity_lock import NOW, pub, started, still_waiting, sub

N = 160  # presentities: more than the 128 buckets, so batches share buckets


def name(i: int) -> str:
    return f"user{i}@example.com"


def publication(i: int, etag: str) -> Publication:
    return pub(etag, name(i))


async def test_concurrent_publishes_share_statements_and_each_gets_its_own_watchers(pg_dsn):
    s = await started(pg_dsn)
    try:
        # Watchers of the even presentities only.
        for i in range(0, 40, 2):
            await s.insert_subscription_state(sub(i, name(i)), NOW)
        results = await asyncio.gather(*(s.insert_publication_watched(publication(i, f"e{i}"), NOW) for i in range(40)))
        assert s.publishes.batches > 0 and s.publishes.batched > s.publishes.batches
        assert s.publishes.retried == 0  # the batches themselves succeeded
        for i, watchers in enumerate(results):
            assert [w.id for w in watchers] == ([f"s{i}"] if i % 2 == 0 else []), i
        for i in range(40):
            assert [p.etag for p in await s.publications(name(i), "presence", NOW)] == [f"e{i}"]
    finally:
        await s.close()


async def test_concurrent_subscribes_share_statements_and_each_gets_its_own_state(pg_dsn):
    s = await started(pg_dsn)
    try:
        for i in range(0, 40, 3):
            await s.insert_publication_watched(publication(i, f"e{i}"), NOW)
        # presence.winfo-style count: how many presence watchers already exist.
        results = await asyncio.gather(*(s.insert_subscription_state(sub(i, name(i)), NOW, "presence") for i in range(40)))
        assert s.subscribes.batches > 0 and s.subscribes.batched > s.subscribes.batches
        assert s.subscribes.retried == 0  # the batches themselves succeeded
        for i, (pubs, count) in enumerate(results):
            assert [p.etag for p in pubs] == ([f"e{i}"] if i % 3 == 0 else []), i
            assert count == 1, i  # itself: its own insert precedes its read
        assert len(await s.list_subscriptions(NOW, presentity=None, watcher=None, event=None, offset=0, limit=100)) == 40
    finally:
        await s.close()


async def test_a_bad_request_in_a_batch_fails_alone(pg_dsn):
    s = await started(pg_dsn)
    try:
        bad = publication(7, "e7")
        bad.tag = "no-such-tag"  # refused by the database (foreign key)
        items = [bad if i == 7 else publication(i, f"e{i}") for i in range(20)]
        results = await asyncio.gather(
            *(s.insert_publication_watched(p, NOW) for p in items), return_exceptions=True
        )
        assert s.publishes.retried >= 1
        assert isinstance(results[7], Exception) and "foreign key" in str(results[7])
        assert all(r == [] for i, r in enumerate(results) if i != 7)
        stored = {p.etag for i in range(20) for p in await s.publications(name(i), "presence", NOW)}
        assert stored == {f"e{i}" for i in range(20) if i != 7}
    finally:
        await s.close()


async def test_two_nodes_batching_in_opposite_orders_neither_deadlock_nor_miss_each_other(pg_dsn):
    """Node a publishes N presentities while node b subscribes to them, in
    the opposite order, both in batches (and b's batches take exclusive
    bucket locks).  Without ordered locking, two batches holding one bucket
    each and wanting the other's deadlock; the database would abort one
    (a refused batch, retried one by one).  And for every presentity, the
    SUBSCRIBE saw the PUBLISH or the PUBLISH saw the SUBSCRIBE."""
    a, b = await started(pg_dsn), await started(pg_dsn)
    try:
        pubs = [publication(i, f"e{i}") for i in range(N)]
        subs = [sub(i, name(i)) for i in reversed(range(N))]
        # Two rounds of subscribers: the second batches against a's refreshes too.
        published, subscribed = await asyncio.wait_for(
            asyncio.gather(
                asyncio.gather(*(a.insert_publication_watched(p, NOW) for p in pubs)),
                asyncio.gather(*(b.insert_subscription_state(s, NOW) for s in subs)),
            ),
            30,
        )
        assert a.publishes.batches > 0 and b.subscribes.batches > 0
        assert a.publishes.retried == 0 and b.subscribes.retried == 0, "a batch was refused (deadlock?)"
        seen_by_pub = {w.presentity for watchers in published for w in watchers}
        seen_by_sub = {s.presentity for s, (state, _) in zip(subs, subscribed) if state}
        missed = {name(i) for i in range(N)} - seen_by_pub - seen_by_sub
        assert not missed
    finally:
        await a.close()
        await b.close()


async def test_the_expiry_sweep_takes_its_bucket_locks_in_order_before_any_row(pg_dsn):
    """The sweep deletes publications of several buckets.  A SUBSCRIBE
    batch holds the lower bucket exclusively and then asks for the higher
    one; a sweep that had locked the higher bucket first (deleting rows in
    table order) and now waited for the lower would deadlock with it.
    presence_expire_publications locks both in order first, so it waits
    holding nothing, and the batch goes on."""
    a = await started(pg_dsn)
    try:
        pick = (
            "SELECT x FROM (SELECT 'u' || i || '@example.com' AS x FROM generate_series(1, 1000) i) s"
            " ORDER BY presence_bucket(x) {}, x LIMIT 1"
        )
        low = (await a._one(pick.format("ASC")) or ("",))[0]
        high = (await a._one(pick.format("DESC")) or ("",))[0]
        for etag, who in (("high", high), ("low", low)):  # table order: the higher bucket first
            p = pub(etag, who)
            p.expires_at = NOW - 1
            await a.insert_publication_watched(p, NOW)
        lock = "SELECT pg_advisory_xact_lock(%s, presence_bucket(%s))"
        async with await psycopg.AsyncConnection.connect(pg_dsn) as batch:
            await batch.execute(lock, (PRESENTITY_LOCK, low))
            sweep = asyncio.ensure_future(a.expire_publications(NOW, "me"))
            assert await still_waiting(sweep)
            await asyncio.wait_for(batch.execute(lock, (PRESENTITY_LOCK, high)), 5)
            await batch.commit()
        expired = await asyncio.wait_for(sweep, 5)
        assert sorted(p.etag for p in expired) == ["high", "low"]
    finally:
        await a.close()


async def test_an_error_that_is_not_one_requests_fault_is_every_requests_answer_at_once(pg_dsn):
    """A statement timeout (or a shutdown, a lost connection) is not one
    request's fault: the batch's requests all get it, without being run
    again one by one (which would multiply the wait)."""
    s = await started(pg_dsn + " options='-c statement_timeout=300'")
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            # Bob's bucket held elsewhere: every SUBSCRIBE of bob waits, and times out.
            await other.execute(
                "SELECT pg_advisory_xact_lock(%s, presence_bucket('bob@example.com'))", (PRESENTITY_LOCK,)
            )
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            results = await asyncio.gather(
                *(s.insert_subscription_state(sub(i), NOW) for i in range(6)), return_exceptions=True
            )
            elapsed = loop.time() - t0
            await other.rollback()
        # Raised as StorageUnavailable (the SIP answer is 503), from the database's error.
        assert all(isinstance(r, StorageUnavailable) and isinstance(r.__cause__, psycopg.errors.QueryCanceled)
                   for r in results), results
        assert s.subscribes.batches >= 1 and s.subscribes.retried == 0
        assert elapsed < 1.5  # two rounds of 0.3 s (alone, then the batch), not six more
    finally:
        await s.close()


async def test_concurrent_state_changes_share_statements_and_each_gets_its_numbers_and_state(pg_dsn):
    """next_notify_state (the NOTIFYs of a PUBLISH) batched: each call gets
    the next CSeq and version of exactly its watchers and the state of its
    presentity; two calls for one presentity in one batch count twice, in
    order."""
    s = await started(pg_dsn)
    try:
        watchers: dict[int, list[str]] = {}
        for i in range(30):
            watchers[i] = [f"s{i}-{k}" for k in range(1 + i % 3)]
            for k, sid in enumerate(watchers[i]):
                x = sub(i * 10 + k, name(i))
                x.id = sid
                await s.insert_subscription_state(x, NOW)
            await s.insert_publication_watched(publication(i, f"e{i}"), NOW)
        calls = [i for i in range(30)] + [0, 0]  # bob... user0 changes three times
        results = await asyncio.gather(
            *(s.next_notify_state(watchers[i], name(i), "presence", NOW) for i in calls)
        )
        assert s.notifies.batches > 0 and s.notifies.retried == 0
        for i, (numbers, pubs) in zip(calls, results):
            assert set(numbers) == set(watchers[i])
            assert [p.etag for p in pubs] == [f"e{i}"]
        for i in range(1, 30):
            numbers, _ = results[i]
            assert all(n == (1, 0) for n in numbers.values()), (i, numbers)
        seen = sorted(results[k][0][watchers[0][0]] for k in (0, 30, 31))
        assert seen == [(1, 0), (2, 1), (3, 2)]  # each change its own CSeq and version
    finally:
        await s.close()


async def test_two_nodes_batching_state_changes_in_opposite_orders_do_not_deadlock(pg_dsn):
    """Each call row-locks its watchers; a batch holds several presentities'
    watchers.  Batches run their calls in presentity order, so two nodes
    changing the same presentities in opposite orders cannot deadlock."""
    a, b = await started(pg_dsn), await started(pg_dsn)
    try:
        ids: dict[int, list[str]] = {}
        for i in range(N):
            ids[i] = [f"w{i}-{k}" for k in range(3)]
            for k, sid in enumerate(ids[i]):
                x = sub(i * 10 + k, name(i))
                x.id = sid
                await a.insert_subscription(x)
        for _ in range(3):
            await asyncio.wait_for(
                asyncio.gather(
                    *(a.next_notify_state(ids[i], name(i), "presence", NOW) for i in range(N)),
                    *(b.next_notify_state(ids[i], name(i), "presence", NOW) for i in reversed(range(N))),
                ),
                30,
            )
        assert a.notifies.batches > 0 and b.notifies.batches > 0
        assert a.notifies.retried == 0 and b.notifies.retried == 0, "a batch was refused (deadlock?)"
        numbers, _ = await a.next_notify_state(ids[5], name(5), "presence", NOW)
        assert set(numbers.values()) == {(7, 6)}  # 6 increments before this one, none lost
    finally:
        await a.close()
        await b.close()
