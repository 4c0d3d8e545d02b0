"""PostgresStorage's connection leases (storage/leases.py ``Leases``):
statements reuse connections kept out of the pool, and the pool's
robustness is kept (a broken connection is replaced, a failed statement
does not cost the connection, waiting beyond max_size is bounded)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from presence_node.storage import StorageUnavailable
from presence_node.storage.postgres import PostgresStorage


async def backends(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        cur = await c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def test_concurrent_statements_share_at_most_max_size_connections(pg_dsn):
    s = PostgresStorage(pg_dsn, min_size=1, max_size=3)
    await s.start()
    try:
        await asyncio.gather(*[s._rows("SELECT pg_sleep(0.05)") for _ in range(12)])
        assert await backends(pg_dsn) <= 3
        assert s.pool._leased <= 3 and not s.pool._waiters
        # Sequential statements reuse one kept connection.
        pids = {(await s._one("SELECT pg_backend_pid()"))[0] for _ in range(5)}  # type: ignore[index]
        assert len(pids) == 1
    finally:
        await s.close()


async def test_a_failed_statement_keeps_its_connection(pg_dsn):
    s = PostgresStorage(pg_dsn, min_size=1, max_size=2)
    await s.start()
    try:
        pid = (await s._one("SELECT pg_backend_pid()"))[0]  # type: ignore[index]
        with pytest.raises(psycopg.errors.DivisionByZero):
            await s._rows("SELECT 1 / 0")
        assert (await s._one("SELECT pg_backend_pid()"))[0] == pid  # type: ignore[index]
    finally:
        await s.close()


async def test_a_killed_backend_is_replaced(pg_dsn):
    s = PostgresStorage(pg_dsn, min_size=1, max_size=2)
    await s.start()
    try:
        pid = (await s._one("SELECT pg_backend_pid()"))[0]  # type: ignore[index]
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as c:
            await c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(StorageUnavailable) as lost:
            await s._rows("SELECT 1")
        assert isinstance(lost.value.__cause__, psycopg.OperationalError)
        # The broken one went back to the pool; the next statement gets a new one.
        for _ in range(50):
            try:
                assert await s._rows("SELECT 1") == [(1,)]
                break
            except StorageUnavailable:
                await asyncio.sleep(0.05)
        assert (await s._one("SELECT pg_backend_pid()"))[0] != pid  # type: ignore[index]
        assert s.pool._leased <= 2
    finally:
        await s.close()


async def test_a_cancelled_waiter_does_not_lose_a_connection(pg_dsn):
    s = PostgresStorage(pg_dsn, min_size=1, max_size=1)
    await s.start()
    try:
        slow = asyncio.ensure_future(s._rows("SELECT pg_sleep(0.2)"))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(s._rows("SELECT 1"), 0.05)
        await slow
        assert await s._rows("SELECT 1") == [(1,)]
        assert s.pool._leased == 1
    finally:
        await s.close()


async def test_closed_storage_refuses_statements(pg_dsn):
    s = PostgresStorage(pg_dsn, min_size=1, max_size=2)
    await s.start()
    await s._rows("SELECT 1")
    await s.close()
    with pytest.raises(Exception):
        await s.ping()


async def test_waiting_for_a_connection_works_outside_a_task(pg_dsn):
    """Handlers run eagerly, not in a Task, until they first suspend
    (service/eager.py): a statement that must wait for a busy connection
    still gets one."""
    from presence_node.service import eager

    s = PostgresStorage(pg_dsn, min_size=1, max_size=1)
    await s.start()
    try:
        got: list[object] = []

        async def handler() -> None:
            got.append(await s._rows("SELECT 2"))

        slow = asyncio.ensure_future(s._rows("SELECT pg_sleep(0.1)"))
        await asyncio.sleep(0.02)
        # As the dispatcher does: from a protocol callback, outside any task.
        started: asyncio.Future[asyncio.Task[None] | None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(lambda: started.set_result(eager.start(handler())))
        task = await started
        assert task is not None
        await task
        await slow
        assert got == [[(2,)]]
    finally:
        await s.close()


async def test_a_request_whose_client_gave_up_is_not_applied(pg_dsn):
    """#13.2: right before the statement, the request's deadline
    (request_deadline, set by the dispatcher to arrival + 64*T1) is
    checked: past it, the request is refused and nothing is written."""
    import time

    from presence_node.storage import Publication, RequestExpired
    from presence_node.storage.base import request_deadline

    s = PostgresStorage(pg_dsn, min_size=1, max_size=2)
    await s.start()
    try:
        await s.ensure_tags({"vip": True}, "n1", time.time())
        pub = Publication("sip:bob@example.com", "presence", "e1", b"x", "application/pidf+xml",
                          time.time() + 60, time.time(), "vip", "")
        token = request_deadline.set(time.time() - 0.001)
        try:
            with pytest.raises(RequestExpired):
                await s.insert_publication_watched(pub, time.time())
        finally:
            request_deadline.reset(token)
        assert await s.publications("sip:bob@example.com", "presence", time.time()) == []
        await s.insert_publication_watched(pub, time.time())  # no deadline: the node's own work
        assert len(await s.publications("sip:bob@example.com", "presence", time.time())) == 1
    finally:
        await s.close()


@pytest.mark.parametrize("sqlstate, unavailable", [
    ("57P01", True),   # admin shutdown: the server is going away
    ("53300", True),   # too many connections
    ("57014", True),   # statement timeout: the database cannot serve in time
    ("40P01", False),  # a deadlock: this statement's, retried by the batcher one by one
    ("22P02", False),  # bad data: the request's own
])
async def test_only_the_database_s_unavailability_is_storage_unavailable(pg_dsn, sqlstate, unavailable):
    """#13.2: errors that say the database cannot serve become
    StorageUnavailable (503 with Retry-After); a statement's own failure
    stays the database's error (group commit retries class 40 one by one)."""
    s = PostgresStorage(pg_dsn, min_size=1, max_size=1)
    await s.start()
    try:
        with pytest.raises(Exception) as err:
            await s._rows(f"DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{sqlstate}'; END $$")
        assert isinstance(err.value, StorageUnavailable) is unavailable, err.value
        cause = err.value.__cause__ if unavailable else err.value
        assert isinstance(cause, psycopg.Error) and cause.sqlstate == sqlstate
        assert await s._rows("SELECT 1") == [(1,)]  # the connection is still good
    finally:
        await s.close()
