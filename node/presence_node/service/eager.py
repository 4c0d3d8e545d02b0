"""Run a coroutine eagerly: to completion right now if it never has to wait.

Python 3.12's eager task factory, for 3.11: with the in-memory backend a
request handler never suspends, and creating an asyncio Task per request
costs more than the handler itself.  A coroutine that does suspend (a
database round trip) is handed to a Task at its first suspension point and
continues exactly as if it had been a Task from the start.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


def start(coro: Coroutine[Any, Any, None]) -> "asyncio.Task[None] | None":
    """Step ``coro`` until it first suspends; return a Task for the rest, or
    None when it already finished."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_resume(coro, yielded))


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    while True:
        try:
            if yielded is None:  # a bare yield (asyncio.sleep(0))
                await asyncio.sleep(0)
                value = None
            else:  # an asyncio future the coroutine is waiting on
                # As Task.__step does: the future was yielded to us, not to a
                # task, so clear the flag its __await__ set before re-awaiting.
                yielded._asyncio_future_blocking = False
                value = await yielded
        except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            yielded = coro.send(value)
        except StopIteration:
            return
