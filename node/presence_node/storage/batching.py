"""Group commit for the hot statements of a shared-database node.

A statement costs the node about 0.2 ms of CPU in the driver and the
database about 0.3 ms (parse, bind, commit, WAL flush), whatever it
carries; the work of one PUBLISH or SUBSCRIBE inside it is far less.  So
requests of one kind that arrive while the database is busy go together, as
one statement and one transaction: at four to a statement the node spends a
third and the database half as much per request (``bench/cluster``).

No request ever waits for company.  While fewer than ``max_inflight``
statements of this kind run and none is queued, a request runs at once, on
its own, as before; only requests that arrive while that many are running
queue, and each statement that finishes takes the whole queue (up to
``max_batch``) with it.  The batch size so follows the load.

Sans I/O: the two statement runners are given, so the policy is tested
without a database.  A batch the database refuses as a whole (one bad item
aborts its transaction) is run again one item at a time, so each request
gets its own answer; an error that is not the statement's (the connection
broke) is every item's answer.

A queued request keeps its deadline (``base.request_deadline``): one whose
client has given up by the time its statement starts is left out of it and
answered :class:`~.base.RequestExpired`, never applied late.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

from .base import RequestExpired, check_deadline, request_deadline

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs ``one(item)`` alone when the database is idle enough, else
    queues the item for the next ``many(items)`` (results in item order).

    A queued request waits for a statement of its kind to finish; should
    those be stuck (a lock held elsewhere on their presentities), the
    request would wait with them although its own presentity is free.  So
    a request queued for ``max_wait`` seconds starts a statement of its own
    (beyond ``max_inflight``; the connection pool still bounds them)."""

    def __init__(
        self,
        one: Callable[[Item], Awaitable[Result]],
        many: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_batch: int = 32,
        max_inflight: int = 2,
        max_wait: float = 0.1,
        item_error: Callable[[BaseException], bool] = lambda e: True,
    ) -> None:
        if max_batch < 2 or max_inflight < 1 or max_wait <= 0:
            raise ValueError("max_batch must be at least 2, max_inflight at least 1, max_wait above 0")
        self._one = one
        self._many = many
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.max_wait = max_wait
        #: Whether a batch's error may be one item's fault (then each item is
        #: run alone); otherwise it is every item's answer.
        self._item_error = item_error
        #: (item, its future, loop time it was queued, its request's deadline)
        self._queue: deque[tuple[Item, asyncio.Future[Result], float, float | None]] = deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        #: Statements started for overdue requests and still running -> when
        #: they started.
        self._overdue_running: dict[asyncio.Task[None], float] = {}
        #: Statements of several items, the items they carried, the batches
        #: refused as a whole and run again one by one, and the statements
        #: started for requests queued longer than max_wait.
        self.batches = 0
        self.batched = 0
        self.retried = 0
        self.overdue = 0

    async def run(self, item: Item) -> Result:
        if self._inflight < self.max_inflight and not self._queue:
            self._inflight += 1
            try:
                return await self._one(item)
            finally:
                self._inflight -= 1
                self._next()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, fut, loop.time(), request_deadline.get()))
        if self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._overdue)
        return await fut

    def backlog(self, now: float) -> float:
        """How long requests have waited beyond what the database keeps up
        with (loop time): those the next statement cannot carry, and, when
        a statement started for overdue requests has itself run longer
        than ``max_wait``, the database is stalled: for how long.  Waiting
        for the statement under way is group commit at work."""
        queue = self._queue
        waited = now - queue[self.max_batch][2] if len(queue) > self.max_batch else 0.0
        if self._overdue_running:
            waited = max(waited, now - min(self._overdue_running.values()) - self.max_wait)
        return waited

    def _take(self) -> list[tuple[Item, asyncio.Future[Result], float | None]]:
        """Up to max_batch queued requests (those cancelled while queued never run)."""
        batch: list[tuple[Item, asyncio.Future[Result], float | None]] = []
        while self._queue and len(batch) < self.max_batch:
            item, fut, _, deadline = self._queue.popleft()
            if not fut.done():
                batch.append((item, fut, deadline))
        return batch

    def _start(self, batch: list[tuple[Item, asyncio.Future[Result], float | None]]) -> "asyncio.Task[None]":
        self._inflight += 1
        task = asyncio.ensure_future(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _next(self) -> None:
        """Start statements for the queue while a slot is free."""
        while self._queue and self._inflight < self.max_inflight:
            batch = self._take()
            if batch:
                self._start(batch)

    def _overdue(self) -> None:
        self._timer = None
        if not self._queue:
            return
        loop = asyncio.get_running_loop()
        waited = loop.time() - self._queue[0][2]
        if waited >= self.max_wait * 0.99:
            batch = self._take()
            if batch:
                self.overdue += 1
                task = self._start(batch)
                self._overdue_running[task] = loop.time()
                task.add_done_callback(self._overdue_running.pop)
        if self._queue:
            waited = loop.time() - self._queue[0][2]
            self._timer = loop.call_later(max(self.max_wait - waited, 0.001), self._overdue)

    async def _flush(self, batch: list[tuple[Item, asyncio.Future[Result], float | None]]) -> None:
        # This task's context is a copy of whichever request started it: the
        # statement of several requests is bound by none of their deadlines,
        # each is checked here instead.
        request_deadline.set(None)
        try:
            batch = self._unexpired(batch)
            if len(batch) == 1:
                await self._settle(*batch[0])
                return
            if not batch:
                return
            self.batches += 1
            self.batched += len(batch)
            try:
                results = await self._many([item for item, _, _ in batch])
            except Exception as e:
                if not self._item_error(e):
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    return
                self.retried += 1
                for entry in batch:
                    await self._settle(*entry)
                return
            for (_, fut, _), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
        except BaseException:
            # Cancelled (shut down): no request is left waiting forever.
            for _, fut, _ in batch:
                fut.cancel()
            raise
        finally:
            self._inflight -= 1
            self._next()

    @staticmethod
    def _unexpired(
        batch: list[tuple[Item, asyncio.Future[Result], float | None]],
    ) -> list[tuple[Item, asyncio.Future[Result], float | None]]:
        """The requests whose clients still wait; the others are answered
        RequestExpired, unapplied."""
        keep = []
        for entry in batch:
            try:
                check_deadline(entry[2])
            except RequestExpired as e:
                if not entry[1].done():
                    entry[1].set_exception(e)
                continue
            keep.append(entry)
        return keep

    async def _settle(self, item: Item, fut: asyncio.Future[Result], deadline: float | None) -> None:
        if fut.done():
            return
        token = request_deadline.set(deadline)  # run alone: bound by its own deadline again
        try:
            result = await self._one(item)
        except Exception as e:
            if not fut.done():
                fut.set_exception(e)
        else:
            if not fut.done():
                fut.set_result(result)
        finally:
            request_deadline.reset(token)

    async def close(self) -> None:
        """Wait for the statements under way (their requests get answers)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
