"""Group commit policy (storage/batching.py), without a database: the
statement runners are stand-ins that record what they were given and
finish when the test says so."""

from __future__ import annotations

import asyncio

import pytest

from presence_node.storage.batching import Batcher


class Statements:
    """Stand-in runners: each call waits for ``release`` and records its items."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_many: BaseException | None = None
        self.bad: set[int] = set()
        #: Items that wait for ``gate`` (None: all of them).
        self.stuck: set[int] | None = None

    async def _wait(self, items: list[int]) -> None:
        if self.stuck is None or self.stuck & set(items):
            await self.gate.wait()

    async def one(self, item: int) -> int:
        self.calls.append([item])
        await self._wait([item])
        if item in self.bad:
            raise ValueError(f"bad item {item}")
        return item * 10

    async def many(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await self._wait(items)
        if self.fail_many is not None:
            raise self.fail_many
        return [i * 10 for i in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_batcher_runs_a_request_at_once_and_alone():
    st = Statements()
    st.gate.set()
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1)
    assert await b.run(1) == 10
    assert await b.run(2) == 20
    assert st.calls == [[1], [2]]
    assert b.batches == 0


async def test_requests_arriving_while_busy_go_together_in_order():
    st = Statements()
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1)
    first = asyncio.ensure_future(b.run(1))
    await settle()
    rest = [asyncio.ensure_future(b.run(i)) for i in range(2, 6)]
    await settle()
    assert st.calls == [[1]]  # the others queue behind the running statement
    st.gate.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40, 50]
    assert st.calls == [[1], [2, 3, 4, 5]]
    assert (b.batches, b.batched) == (1, 4)


async def test_max_inflight_statements_run_before_any_request_queues():
    st = Statements()
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=2)
    tasks = [asyncio.ensure_future(b.run(i)) for i in range(1, 6)]
    await settle()
    assert st.calls == [[1], [2]]
    st.gate.set()
    assert await asyncio.gather(*tasks) == [10, 20, 30, 40, 50]
    # Each finished statement took the whole queue; one of them found it empty.
    assert sorted(map(len, st.calls)) == [1, 1, 3]


async def test_a_batch_holds_at_most_max_batch_items():
    st = Statements()
    b = Batcher(st.one, st.many, max_batch=3, max_inflight=1)
    tasks = [asyncio.ensure_future(b.run(i)) for i in range(8)]
    await settle()
    st.gate.set()
    assert await asyncio.gather(*tasks) == [i * 10 for i in range(8)]
    assert st.calls == [[0], [1, 2, 3], [4, 5, 6], [7]]


async def test_a_refused_batch_is_run_again_item_by_item_so_only_the_bad_item_fails():
    st = Statements()
    st.fail_many = ValueError("the batch was refused")
    st.bad = {3}
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1)
    first = asyncio.ensure_future(b.run(1))
    await settle()
    rest = [asyncio.ensure_future(b.run(i)) for i in (2, 3, 4)]
    await settle()
    st.gate.set()
    assert await first == 10
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert results[0] == 20 and results[2] == 40
    assert isinstance(results[1], ValueError) and "bad item 3" in str(results[1])
    assert st.calls == [[1], [2, 3, 4], [2], [3], [4]]
    assert b.retried == 1


async def test_an_error_that_is_not_an_items_fault_is_every_items_answer():
    st = Statements()
    st.fail_many = ConnectionError("connection lost")
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1, item_error=lambda e: not isinstance(e, ConnectionError))
    first = asyncio.ensure_future(b.run(1))
    await settle()
    rest = [asyncio.ensure_future(b.run(i)) for i in (2, 3)]
    await settle()
    st.gate.set()
    await first
    results = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert st.calls == [[1], [2, 3]]  # not retried one by one
    assert b.retried == 0


async def test_a_request_cancelled_while_queued_never_runs():
    st = Statements()
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1)
    first = asyncio.ensure_future(b.run(1))
    await settle()
    gone = asyncio.ensure_future(b.run(2))
    kept = asyncio.ensure_future(b.run(3))
    await settle()
    gone.cancel()
    st.gate.set()
    assert await first == 10
    assert await kept == 30
    assert st.calls == [[1], [3]]


async def test_close_waits_for_the_statements_under_way():
    st = Statements()
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1)
    first = asyncio.ensure_future(b.run(1))
    await settle()
    queued = [asyncio.ensure_future(b.run(i)) for i in (2, 3)]
    await settle()
    st.gate.set()
    await first
    await b.close()
    assert all(t.done() for t in queued)
    assert [t.result() for t in queued] == [20, 30]


async def test_requests_queued_behind_stuck_statements_start_their_own_after_max_wait():
    """The statements under way wait for a lock on their presentities; a
    request for another presentity queued behind them must not wait with
    them for longer than max_wait."""
    st = Statements()
    st.stuck = {1}
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1, max_wait=0.05)
    stuck = asyncio.ensure_future(b.run(1))
    await settle()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await asyncio.wait_for(asyncio.gather(b.run(2), b.run(3)), 2) == [20, 30]
    assert 0.04 <= loop.time() - t0 < 1.0
    assert st.calls == [[1], [2, 3]] and b.overdue == 1
    assert not stuck.done()
    st.gate.set()
    assert await stuck == 10


async def test_no_statement_is_started_early_while_the_queue_moves():
    st = Statements()
    b = Batcher(st.one, st.many, max_batch=4, max_inflight=1, max_wait=0.05)
    st.gate.set()
    results = await asyncio.gather(*(b.run(i) for i in range(40)))
    assert results == [i * 10 for i in range(40)]
    await asyncio.sleep(0.1)
    assert b.overdue == 0


def test_a_batch_must_be_able_to_hold_two():
    with pytest.raises(ValueError):
        Batcher(Statements().one, Statements().many, max_batch=1)


async def test_a_queued_request_whose_client_gave_up_is_never_applied():
    """#13.2: a request still queued when its deadline (arrival + 64*T1,
    request_deadline) passes is answered RequestExpired and left out of
    the statement; the others of its batch run."""
    import time

    from presence_node.storage.base import RequestExpired, request_deadline

    st = Statements()
    b = Batcher(st.one, st.many, max_batch=8, max_inflight=1, max_wait=10)

    async def run(item: int, deadline: float | None) -> int:
        request_deadline.set(deadline)  # this task's own context, as the dispatcher's
        return await b.run(item)

    first = asyncio.ensure_future(run(1, None))
    await settle()
    late = asyncio.ensure_future(run(2, time.time() + 0.05))
    fine = asyncio.ensure_future(run(3, time.time() + 60))
    await settle()
    await asyncio.sleep(0.1)  # item 2's client gives up while it waits behind item 1
    st.gate.set()
    assert await first == 10 and await fine == 30
    with pytest.raises(RequestExpired):
        await late
    assert st.calls == [[1], [3]]
