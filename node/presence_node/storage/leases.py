"""Connection leasing for the PostgreSQL backend (:mod:`.postgres`).

Every statement needs a connection, and psycopg_pool's own checkout costs
as much CPU as the statement; :class:`Leases` keeps idle connections out of
the pool between statements and still lets the pool repair what breaks.
This module also says which driver errors mean "the database cannot serve
now" (:func:`unavailable`, raised as :class:`Unreachable`, a
:class:`StorageUnavailable`), as opposed to one statement's fault.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncConnection, AsyncCursor, AsyncRawCursor
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from .base import StorageUnavailable

log = logging.getLogger(__name__)

#: SQLSTATE classes of an OperationalError that mean the database cannot
#: serve now, whatever the statement ("": the client lost or never had the
#: connection; connection exceptions, resources, shutdown or cancellation,
#: system errors).  Others (class 40: a deadlock) stay the statement's.
_UNAVAILABLE = frozenset({"", "08", "53", "57", "58"})


def unavailable(e: psycopg.OperationalError) -> bool:
    return (e.sqlstate or "")[:2] in _UNAVAILABLE


class Unreachable(StorageUnavailable, psycopg.OperationalError):
    """The database is out of reach: a :class:`StorageUnavailable` for the
    callers that know only the storage interface (SIP and admin API answer
    503), and still a ``psycopg.OperationalError`` for those that know the
    driver.  The driver's own error is its ``__cause__``."""


class Leases:
    """Connections borrowed from a psycopg pool and kept between statements.

    ``AsyncConnectionPool.connection()`` costs about 0.1 ms of CPU per use
    (two asyncio locks, logging calls, the connection's own context
    manager), as much as the statement itself.  Here a statement takes an
    idle connection from a list and puts it back, with no await unless all
    ``max_size`` connections are busy.  A connection that breaks, or comes
    back inside a transaction or mid-statement, goes back to the pool, which
    rolls it back or replaces it (so database loss and return behave as
    with the pool alone); a new one is then taken from the pool.
    ``connection()`` has the pool's interface, for the multi-statement
    transactions."""

    def __init__(self, pool: AsyncConnectionPool[Any], max_size: int, timeout: float = 30.0) -> None:
        self._pool = pool
        self._max = max_size
        #: Seconds a caller waits for a connection (then StorageUnavailable).
        self.timeout = timeout
        self._idle: list[AsyncConnection[Any]] = []
        self._leased = 0  # connections taken from the pool, idle or busy
        self._waiters: deque[asyncio.Future[AsyncConnection[Any] | None]] = deque()
        self._cursors: WeakKeyDictionary[AsyncConnection[Any], AsyncCursor[Any]] = WeakKeyDictionary()
        self._raw_cursors: WeakKeyDictionary[AsyncConnection[Any], AsyncRawCursor[Any]] = WeakKeyDictionary()
        self._closed = False
        self._checking: asyncio.Future[None] | None = None

    async def acquire(self) -> AsyncConnection[Any]:
        """An idle connection, else one within ``timeout`` seconds in all
        (waiting for a free slot, then for the pool), else
        :class:`StorageUnavailable`."""
        if self._idle:
            return self._idle.pop()
        if self._closed:
            raise PoolClosed("the storage is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._leased < self._max:
            return await self._from_pool(self.timeout)
        fut: asyncio.Future[AsyncConnection[Any] | None] = loop.create_future()
        self._waiters.append(fut)
        try:
            # wait_for, not asyncio.timeout: handlers run eagerly, outside
            # a task, until they first suspend (service/eager.py).
            conn = await asyncio.wait_for(fut, self.timeout)
        except BaseException as e:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                got = fut.result()  # handed over just as we gave up: pass it on
                if got is not None:
                    self.release(got)
                else:
                    self._wake()
            if isinstance(e, TimeoutError):
                raise StorageUnavailable(f"no database connection within {self.timeout:.1f} s") from None
            raise
        return conn if conn is not None else await self._from_pool(deadline - loop.time())

    async def _from_pool(self, timeout: float) -> AsyncConnection[Any]:
        self._leased += 1
        try:
            return await self._pool.getconn(max(timeout, 0.001))
        except BaseException as e:
            self._leased -= 1
            self._wake()
            if isinstance(e, PoolTimeout):
                raise StorageUnavailable(f"no database connection within {self.timeout:.1f} s") from None
            raise

    def release(self, conn: AsyncConnection[Any]) -> None:
        """Put back a connection that is idle and healthy."""
        if self._closed:
            self._leased -= 1
            asyncio.ensure_future(self._pool.putconn(conn))  # the closed pool closes it
            return
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        self._idle.append(conn)

    def done(self, conn: AsyncConnection[Any]) -> None:
        """After use: keep an idle connection, give any other back to the pool."""
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            self.release(conn)
        else:
            asyncio.ensure_future(self.discard(conn))

    async def discard(self, conn: AsyncConnection[Any]) -> None:
        """Give a connection back to the pool (it resets or replaces it)."""
        self._leased -= 1
        self._cursors.pop(conn, None)
        self._raw_cursors.pop(conn, None)
        try:
            await self._pool.putconn(conn)
        finally:
            self._wake()

    def failed(self, conn: AsyncConnection[Any], e: psycopg.OperationalError) -> Unreachable:
        """After an error on ``conn`` that says the database cannot serve
        (:func:`unavailable`: the connection is gone, the server is shutting down
        or out of resources): not the caller's fault and nothing to wait
        for, so the error to raise."""
        self.done(conn)
        if conn.broken or conn.closed:
            self.lost()
        return Unreachable(f"PostgreSQL unavailable: {e}")

    def lost(self) -> None:
        """A statement found its connection broken.  The database drops
        every connection at once (a restart, a failover), so the idle ones
        are closed and replaced too, rather than each failing one more
        request, and the pool checks those it holds."""
        idle, self._idle = self._idle, []
        for conn in idle:
            asyncio.ensure_future(self._replace(conn))
        if not self._closed and (self._checking is None or self._checking.done()):
            self._checking = asyncio.ensure_future(self._check_pool())

    async def _replace(self, conn: AsyncConnection[Any]) -> None:
        await conn.close()  # the pool replaces a closed connection
        await self.discard(conn)

    async def _check_pool(self) -> None:
        try:
            await self._pool.check()
        except Exception as e:  # best effort: the next statement finds out anyway
            log.debug("pool check failed", extra={"error": repr(e)})

    def _wake(self) -> None:
        # A slot is free: the first waiter takes a connection from the pool.
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def cursor(self, conn: AsyncConnection[Any], raw: bool = False) -> AsyncCursor[Any]:
        """The connection's reused cursor; ``raw``: the one for ``$n``
        placeholders, which psycopg passes through unparsed (it caches its
        parse of a ``%s`` query only up to 50 parameters, and re-parsing a
        batch statement would cost a quarter of the node's CPU)."""
        if raw:
            rcur = self._raw_cursors.get(conn)
            if rcur is None:
                rcur = self._raw_cursors[conn] = AsyncRawCursor(conn)
            return rcur
        cur = self._cursors.get(conn)
        if cur is None:
            cur = self._cursors[conn] = conn.cursor()
        return cur

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        conn = await self.acquire()
        try:
            yield conn
        except psycopg.OperationalError as e:
            if not unavailable(e):
                self.done(conn)
                raise
            raise self.failed(conn, e) from e
        except BaseException:
            self.done(conn)
            raise
        self.done(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.discard(conn)
        for w in self._waiters:
            if not w.done():
                w.set_exception(PoolClosed("the storage is closed"))
        self._waiters.clear()
        await self._pool.close()
