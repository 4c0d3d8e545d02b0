"""The local-mode driver of the planner: probe, judge, plan, act, record.

Every ``interval`` seconds each node's ``/readyz`` and ``/tags`` are probed
in parallel (a probe that fails or times out counts as a failure; a
``/readyz`` that says ``storage-unavailable`` marks the node alive with its
storage down, which the planner does not take for a node failure while its
location's other nodes say the same), the results feed the health detector, and :func:`planner.plan` decides.  Its
actions are carried out in order; ``RecordIntent`` is written to
``status.json`` before any order goes out, so a supervisor stopped mid-way
and started again rolls the same failover forward.  Manual operations
(fencing, switchover) are read from ``operations.json`` at every tick, as
the kopf driver reads the CR's annotations.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import aiohttp

from presence_node.admin.client import AdminClient, AdminError

from .. import planner as p
from .. import spec as specs
from ..health import HealthDetector
from .state import ops_file, read_json, secret_file, status_file, write_json




def _record_to_json(r: p.FailoverRecord) -> dict[str, Any]:
    return {"from": r.source, "to": r.target, "tags": list(r.tags), "reason": r.reason, "time": r.time,
            "seconds": r.seconds}


def _record_from_json(d: dict[str, Any] | None) -> p.FailoverRecord | None:
    if not d:
        return None
    return p.FailoverRecord(d["from"], d["to"], tuple(d["tags"]), d["reason"], d["time"], d["seconds"])


class Supervisor:
    def __init__(self, spec: specs.PresenceClusterSpec, run: dict[str, Any], d: Path, *,
                 interval: float = 0.2, log: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.run = run
        self.dir = d
        self.interval = interval
        self.log = log
        self.detector = HealthDetector(spec.failover.detection_seconds)
        self.status: dict[str, Any] = read_json(status_file(d)) or {}
        self._events: dict[str, float] = {}
        self._secret = secret_file(d).read_text().strip()
        self._ops: tuple[frozenset[str], dict[str, str]] = (frozenset(), {})
        #: A completed or abandoned intent's clearing, held for the next status write of the tick.
        self._cleared: dict[str, Any] = {}

    async def run_forever(self) -> None:
        timeout = max(0.1, min(0.5, self.interval * 2))
        clients = {name: AdminClient(f"http://{n['admin']}", self._secret, timeout=timeout)
                   for name, n in self.run["nodes"].items()}
        for c in clients.values():
            await c.__aenter__()
        try:
            while True:
                started = time.monotonic()
                await self.tick(clients)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            for c in clients.values():
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

    async def tick(self, clients: dict[str, AdminClient]) -> None:
        self._cleared = {}
        names = list(clients)
        results = await asyncio.gather(*(clients[n].probe() for n in names))
        now = time.time()
        nodes: dict[str, p.NodeState] = {}
        for name, probe in zip(names, results):
            v = self.detector.observe(name, probe.ready and probe.reachable, now, probe.storage_down)
            nodes[name] = p.NodeState(name, self.run["nodes"][name]["location"], v.health, probe.reachable, v.since,
                                      v.failing_since, probe.active, v.storage_down)
            old = self.status.get("nodes", {}).get(name, {}).get("health")
            if old != v.health.value:
                self.log(f"node {name}: {old or 'new'} -> {v.health.value}")
        st = self.status
        fenced, switchovers = self.operations()
        observed = p.Observed(
            now=now, nodes=nodes, fenced=fenced, switchovers=switchovers,
            tags={t: p.TagRecord(r["owner"], r["epoch"], r["since"]) for t, r in st.get("tags", {}).items()},
            intent=p.intent_from_json(st.get("intent")),
            last_failover=_record_from_json(st.get("lastFailover")), failover_count=st.get("failoverCount", 0),
        )
        for action in p.plan(self.spec, observed):
            await self._do(action, clients, nodes, (fenced, switchovers))

    async def _do(self, a: p.Action, clients: dict[str, AdminClient], nodes: dict[str, p.NodeState],
                  ops: tuple[frozenset[str], dict[str, str]] = (frozenset(), {})) -> None:
        fenced, switchovers = ops
        st = self.status
        if isinstance(a, p.RecordIntent):
            st.update(self._cleared)
            self._cleared = {}
            st["intent"] = p.intent_to_json(a.intent)
            write_json(status_file(self.dir), st)  # before any order: a restart rolls forward
        elif isinstance(a, p.ClearIntent):
            # Not written alone: the plan's SetStatus (or a new RecordIntent) that follows carries it,
            # so status.json never shows the intent gone with the old owner and failover count.
            self._cleared = {"intent": None}
            if a.completed is not None:
                rec = _record_to_json(a.completed)
                self._cleared.update(lastFailover=rec, history=[*st.get("history", []), rec])
        elif isinstance(a, p.ActivateTag):
            try:
                await clients[a.node].activate(a.tag, a.epoch)
            except AdminError as e:
                body = e.body if isinstance(e.body, dict) else {}
                if not (e.status == 409 and body.get("owner") == a.node):  # already landed: fine
                    self.log(f"activate {a.tag} on {a.node} at epoch {a.epoch} failed: {e}")
                    return
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                self.log(f"activate {a.tag} on {a.node} at epoch {a.epoch}: unreachable ({e!r})")
                return
            intent = p.intent_from_json(st.get("intent"))
            took = f" {time.time() - intent.detected:.2f} s after the first failed probe" if intent else ""
            self.log(f"tag {a.tag} active on {a.node} at epoch {a.epoch}{took}")
        elif isinstance(a, p.DeactivateTag):
            try:
                await clients[a.node].deactivate(a.tag)
                self.log(f"tag {a.tag} deactivated on {a.node}")
            except (AdminError, aiohttp.ClientError, asyncio.TimeoutError) as e:
                # Best effort: the epoch of the following activation fences it.
                self.log(f"deactivate {a.tag} on {a.node} failed: {e!r}")
        elif isinstance(a, p.Event):
            key = f"{a.reason}: {a.message}"
            if time.monotonic() - self._events.get(key, -1e9) > 30:
                self._events[key] = time.monotonic()
                self.log(f"event {a.type} {key}")
        elif isinstance(a, p.SetStatus):
            new = {**st, **self._cleared}
            self._cleared = {}
            new.update({
                "phase": a.phase,
                "conditions": dict(a.conditions),
                "tags": {t: {"owner": r.owner, "epoch": r.epoch, "since": r.since} for t, r in a.tags.items()},
                "nodes": {n: {"ready": up, "tags": list(tags), "health": nodes[n].health.value}
                          for n, (up, tags) in a.nodes.items()},
                "readyNodes": a.ready_nodes, "totalNodes": a.total_nodes,
                "failoverCount": a.failover_count,
                "fenced": sorted(fenced),
                "switchovers": dict(switchovers),
                "lastFailover": _record_to_json(a.last_failover) if a.last_failover else None,
            })
            if new != st:
                self.status = new
                write_json(status_file(self.dir), new)
