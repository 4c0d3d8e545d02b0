"""The background-task group (presence_node.tasks, issue #14.5): one failure
is logged and the others go on; a drain is bounded; cancel ends them all."""

from __future__ import annotations

import asyncio
import logging

from presence_node.tasks import Tasks


async def test_a_failed_task_is_logged_with_its_group_and_the_others_go_on(caplog):
    group = Tasks("notify")
    gate = asyncio.Event()

    async def fail() -> None:
        raise ValueError("boom")

    async def wait() -> str:
        await gate.wait()
        return "done"

    other = group.spawn(wait())
    with caplog.at_level(logging.ERROR, logger="presence_node.tasks"):
        group.spawn(fail())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    (rec,) = caplog.records
    assert rec.group == "notify" and rec.exc_info[0] is ValueError
    assert not other.done() and len(group) == 1
    gate.set()
    assert await group.drain(1.0) and await other == "done" and len(group) == 0


async def test_drain_waits_for_tasks_started_while_draining():
    group = Tasks("t")
    finished = []

    async def second() -> None:
        await asyncio.sleep(0.01)
        finished.append(2)

    async def first() -> None:
        await asyncio.sleep(0.01)
        group.spawn(second())
        finished.append(1)

    group.spawn(first())
    assert await group.drain(5.0)
    assert finished == [1, 2]


async def test_drain_is_bounded_and_leaves_a_stuck_task_running(caplog):
    group = Tasks("t")
    stuck = group.spawn(asyncio.Event().wait())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert not await group.drain(0.1)
    assert loop.time() - t0 < 5.0 and not stuck.done()
    await group.cancel()
    assert stuck.cancelled() and len(group) == 0
    assert not caplog.records  # a cancelled task is not a failure


async def test_added_task_is_tracked_and_a_drain_of_nothing_returns_at_once():
    group = Tasks("t")
    assert await group.drain(0.0)
    task = group.add(asyncio.ensure_future(asyncio.sleep(0.01)))
    assert len(group) == 1
    assert await group.drain(5.0) and task.done() and len(group) == 0
