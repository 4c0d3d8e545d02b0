"""Background tasks a component starts and must account for at shutdown.

NOTIFY sending, request handlers that suspend, federation messages and TCP
connects each run as Tasks that outlive the call that started them.  A
Tasks group keeps a reference to each (the event loop holds only a weak
one), logs the exception of one that fails (otherwise it surfaces only as
"Task exception was never retrieved", whenever the Task is collected) and,
at shutdown, waits for them within a bound or cancels them.

Not asyncio.TaskGroup: it cancels every task on the first failure and its
``async with`` waits without a bound.  Here one failed NOTIFY must not stop
the others, and a drain must end by its deadline even if a peer never answers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any, Coroutine

log = logging.getLogger(__name__)


class Tasks:
    """A set of running Tasks named ``name`` (in the failure log line)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, context: contextvars.Context | None = None
    ) -> "asyncio.Task[Any]":
        """Run ``coro`` as a Task of this group (in ``context``: by default a
        copy of the current one, as create_task does)."""
        return self.add(asyncio.get_running_loop().create_task(coro, context=context))

    def add(self, task: "asyncio.Task[Any]") -> "asyncio.Task[Any]":
        """Adopt a Task created elsewhere (e.g. by eager.start)."""
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", exc_info=exc, extra={"group": self.name})

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no task is left (including
        those the running ones start meanwhile); True if none is."""
        deadline = time.monotonic() + timeout
        while self._tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

    async def cancel(self, timeout: float = 1.0) -> None:
        """Cancel every task and wait (up to ``timeout``) for them to end."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
