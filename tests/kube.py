"""Test support for the operator: a thread runner for kopf and small
helpers (the emulator is :mod:`kube_emulator`, beside this file, served
by the ``kmock`` fixture through ``kmock_options`` in conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from presence_operator.local.pg import free_port  # noqa: F401 - re-exported for the tests


# -- kopf in a thread ------------------------------------------------------------


class OperatorThread:
    """``kopf.operator()`` in its own thread and loop (kopf cancels every task
    of the loop it runs in, pytest's included); joined off the test's loop."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="kopf")

    def _run(self) -> None:
        import kopf

        try:
            asyncio.run(kopf.operator(ready_flag=self.ready, stop_flag=self.stop, **self.kwargs))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            self.error = e

    async def __aenter__(self) -> "OperatorThread":
        self.thread.start()
        assert await asyncio.to_thread(self.ready.wait, 15), "kopf did not start"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "kopf did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        v = check()
        if v:
            return v
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
