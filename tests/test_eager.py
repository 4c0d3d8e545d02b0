"""The eager runner finishes synchronous coroutines at once and hands
suspending ones to a task that sees results and exceptions as usual."""

import asyncio

import pytest

from presence_node.service import eager


async def test_completes_without_a_task_when_nothing_waits():
    seen = []

    async def work():
        seen.append(1)

    assert eager.start(work()) is None
    assert seen == [1]


async def test_suspending_coroutine_gets_results_and_exceptions():
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    bad: asyncio.Future[int] = loop.create_future()
    seen = []

    async def work():
        seen.append("start")
        seen.append(await fut)
        await asyncio.sleep(0)
        try:
            await bad
        except ValueError as e:
            seen.append(str(e))

    task = eager.start(work())
    assert task is not None and seen == ["start"]
    fut.set_result(7)
    await asyncio.sleep(0.01)
    bad.set_exception(ValueError("boom"))
    await task
    assert seen == ["start", 7, "boom"]


async def test_cancelling_the_task_cancels_the_coroutine():
    cancelled = []

    async def work():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = eager.start(work())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]
