"""The local-mode driver of the planner: probe, and hand to the executor.

Every ``interval`` seconds each node's ``/readyz`` and ``/tags`` are probed
in parallel (a probe that fails or times out counts as a failure; a
``/readyz`` that says ``storage-unavailable`` marks the node alive with its
storage down) and the results go to the executor (``executor.py``, shared
with the kopf driver), which judges, plans and acts through this module's
ports: ``status.json`` (:class:`StatusFile`; the intent is written there
before any order goes out, so a supervisor stopped mid-way and started
again rolls the same failover forward) and the log (:class:`LogLines`,
Events included).  Manual operations (fencing, switchover) are read from
``operations.json`` at every tick, as the kopf driver reads the CR's
annotations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from presence_node.admin.client import AdminClient

from .. import planner as p
from .. import spec as specs
from ..executor import Executor, Observation
from .state import ops_file, read_json, secret_file, status_file, write_json


class StatusFile:
    """The status store: ``status.json``, replaced whole at each write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def read(self) -> dict[str, Any]:
        return read_json(self.path) or {}

    async def write(self, status: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        write_json(self.path, status)


class LogLines:
    """The log and the Events: lines of the supervisor's output."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log

    def info(self, msg: str) -> None:
        self._log(msg)

    warning = info

    def emit(self, type: p.EventType, reason: p.EventReason, message: str) -> None:
        self.info(f"event {type} {reason}: {message}")


class Supervisor:
    def __init__(self, spec: specs.PresenceClusterSpec, run: dict[str, Any], d: Path, *,
                 interval: float = 0.2, log: Callable[[str], None] = print) -> None:
        self.run = run
        self.dir = d
        self.interval = interval
        self.log = log
        self._secret = secret_file(d).read_text().strip()
        self._ops: tuple[frozenset[str], dict[str, str]] = (frozenset(), {})
        self.clients: dict[str, AdminClient] = {}
        lines = LogLines(log)
        self.executor = Executor(spec, store=StatusFile(status_file(d)), events=lines, admins=self.clients, log=lines)

    async def run_forever(self) -> None:
        timeout = max(0.1, min(0.5, self.interval * 2))
        for name, n in self.run["nodes"].items():
            self.clients[name] = await AdminClient(f"http://{n['admin']}", self._secret, timeout=timeout).__aenter__()
        try:
            await self.executor.load()
            while True:
                started = time.monotonic()
                await self.tick()
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            for c in self.clients.values():
                await c.__aexit__(None, None, None)

    def operations(self) -> tuple[frozenset[str], dict[str, str]]:
        """Fenced nodes and switchover requests from ``operations.json``
        (none when absent; a torn or malformed file counts as unchanged)."""
        try:
            ops = read_json(ops_file(self.dir)) or {}
            self._ops = (frozenset(ops.get("fenced") or ()), dict(ops.get("switchovers") or {}))
        except (ValueError, TypeError, AttributeError, OSError) as e:
            self.log(f"ignoring {ops_file(self.dir)}: {e}")
        return self._ops

    async def tick(self) -> None:
        names = list(self.clients)
        results = await asyncio.gather(*(self.clients[n].probe() for n in names))
        seen = {name: Observation(self.run["nodes"][name]["location"], probe.ready and probe.reachable, probe)
                for name, probe in zip(names, results)}
        fenced, switchovers = self.operations()
        await self.executor.tick(seen, fenced=fenced, switchovers=switchovers)
