"""The one executor of the planner's decisions, shared by both drivers.

A driver (kopf: ``handlers.py``; local mode: ``local/supervisor.py``)
probes its nodes its own way and hands one :class:`Observation` per node to
:meth:`Executor.tick`, which judges them over time (the health detector),
asks :func:`planner.plan` and carries out the actions in order, through
small ports the driver supplies:

- :class:`StatusStore`: the status (:mod:`.status`, one layout), kept as the
  CR's ``.status`` or as ``status.json``.  ``RecordIntent`` is written
  before any order goes out, so a driver stopped mid-way and started again
  rolls the same failover forward.  ``ClearIntent`` is not written alone:
  the status write that follows carries it, so the status never shows the
  intent gone with the old owner and failover count.
- :class:`Events`: Kubernetes Events, or log lines; the same one at most
  every :data:`EVENT_REPEAT_SECONDS`.
- ``admins``: node -> its admin API (:class:`NodeAdmin`), absent while it
  has no address.  A 409 from the target itself means the order already
  landed; an unreachable target keeps the intent, and the next tick re-sends
  the same order.  Deactivation is best effort: the epoch of the activation
  that follows fences the old owner anyway.
- :class:`Routing` (kopf, mode ``ha``): the pod label the SIP Service
  selects.  No Service selects the old owner while its tag moves, and after
  each tick the recorded owner, and nobody else, carries the label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from presence_node.admin.client import AdminError, Probe

from . import planner as p
from . import spec as specs
from . import status as st
from .health import HealthDetector

#: The same Event (reason and message) goes out at most once per this period.
EVENT_REPEAT_SECONDS = 30.0
#: What an order to a node that does not answer raises.
UNREACHABLE = (aiohttp.ClientError, asyncio.TimeoutError)


class StatusStore(Protocol):
    async def read(self) -> Mapping[str, Any]:
        """The status as stored (empty when there is none)."""

    async def write(self, status: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        """Store ``status``; ``patch`` is the merge patch from the status
        last read or written to it."""


class Events(Protocol):
    def emit(self, type: p.EventType, reason: p.EventReason, message: str) -> None: ...


class NodeAdmin(Protocol):
    """The orders of a node's admin API (what ``AdminClient`` offers)."""

    async def activate(self, tag: str, epoch: int | None = None) -> Any: ...

    async def deactivate(self, tag: str) -> Any: ...


class Routing(Protocol):
    """Which nodes the SIP Service of a tag selects (pod labels)."""

    def nodes(self) -> Iterable[str]:
        """The nodes that have a pod this tick."""

    async def label(self, node: str, tag: str, on: bool) -> None:
        """Make ``node``'s pod carry (or not) the owner label of ``tag``."""


class Log(Protocol):
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Observation:
    """One node as a driver saw it this tick."""

    location: str
    #: The health detector's input: the node answered ready (and, in
    #: Kubernetes, its pod exists, has an IP, is Ready and not going away).
    ok: bool
    probe: Probe
    #: Its pod's name (Kubernetes), shown in status.
    pod: str | None = None


def already_landed(e: AdminError, node: str) -> bool:
    """A 409 from the activation's target naming itself as the owner: the
    order landed before (one re-sent after a restart)."""
    body = e.body if isinstance(e.body, dict) else {}
    return e.status == 409 and body.get("owner") == node


@dataclass(frozen=True, slots=True)
class _Tick:
    """What the current tick saw, for the status it writes."""

    now: float
    nodes: Mapping[str, p.NodeState]
    fenced: frozenset[str]
    switchovers: Mapping[str, str]
    generation: int | None
    pods: Mapping[str, str]


class Executor:
    """Judge, plan, act, record: one cluster's failover loop body."""

    def __init__(self, spec: specs.PresenceClusterSpec, *, store: StatusStore, events: Events,
                 admins: Mapping[str, NodeAdmin], log: Log, routing: Routing | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.store = store
        self.events = events
        #: Read at each order: the driver adds and replaces clients as addresses change.
        self.admins = admins
        self.log = log
        self.routing = routing
        self.clock = clock
        self.monotonic = monotonic
        self.detector = HealthDetector(spec.failover.detection_seconds)
        #: The status as last read or written.
        self.status: dict[str, Any] = {}
        self._emitted: dict[str, float] = {}
        #: A completed or abandoned intent's clearing, held for the next status write of the tick.
        self._cleared: dict[str, Any] = {}
        self._tick: _Tick | None = None

    async def load(self) -> None:
        """The status as stored: an intent left by a previous driver is rolled forward."""
        self.status = dict(await self.store.read())

    async def tick(self, seen: Mapping[str, Observation], *, fenced: frozenset[str] = frozenset(),
                   switchovers: Mapping[str, str] | None = None, generation: int | None = None) -> None:
        self._cleared = {}  # one left by a failed tick: the intent is still in status and is judged again
        now = self.clock()
        nodes: dict[str, p.NodeState] = {}
        for name, o in seen.items():
            # Alive with its storage down (its own /readyz says so): not ok
            # either, yet the planner does not take it for a node failure
            # while its location's other nodes say the same.
            v = self.detector.observe(name, o.ok, now, o.probe.storage_down)
            nodes[name] = p.NodeState(name, o.location, v.health, o.probe.reachable, v.since, v.failing_since,
                                      o.probe.active, v.storage_down)
            old = ((self.status.get("nodes") or {}).get(name) or {}).get("health")
            if old != v.health.value:
                self.log.info(f"node {name}: {old or 'new'} -> {v.health.value}")
        switchovers = dict(switchovers or {})
        self._tick = _Tick(now, nodes, fenced, switchovers, generation,
                           {n: o.pod for n, o in seen.items() if o.pod is not None})
        observed = st.observed(self.status, now, nodes, fenced=fenced, switchovers=switchovers)
        for action in p.plan(self.spec, observed):
            await self._do(action)
        if self.routing is not None:
            await self._route_owners(self.routing)

    def event(self, type: p.EventType, reason: p.EventReason, message: str) -> None:
        """Emit an Event unless the same one went out within :data:`EVENT_REPEAT_SECONDS`."""
        now = self.monotonic()
        self._emitted = {k: t for k, t in self._emitted.items() if now - t <= EVENT_REPEAT_SECONDS}
        key = f"{reason}: {message}"
        if key not in self._emitted:
            self._emitted[key] = now
            self.events.emit(type, reason, message)

    # -- actions --

    async def _do(self, a: p.Action) -> None:
        if isinstance(a, p.RecordIntent):
            cleared, self._cleared = self._cleared, {}
            await self._write(st.merge(self.status, {**cleared, "intent": st.intent_to_json(a.intent)}))
        elif isinstance(a, p.ClearIntent):
            self._cleared = {"intent": None}
            if a.completed is not None:
                self._cleared["lastFailover"] = st.record_to_json(a.completed)
        elif isinstance(a, p.ActivateTag):
            await self._activate(a)
        elif isinstance(a, p.DeactivateTag):
            await self._deactivate(a)
        elif isinstance(a, p.Event):
            self.event(a.type, a.reason, a.message)
        elif isinstance(a, p.SetStatus):
            await self._set_status(a)

    async def _activate(self, a: p.ActivateTag) -> None:
        admin = self.admins.get(a.node)
        if admin is None:
            return
        if self.routing is not None:  # no Service selects the old owner while the tag moves
            for node in self.routing.nodes():
                if node != a.node:
                    await self.routing.label(node, a.tag, False)
        try:
            await admin.activate(a.tag, a.epoch)
        except AdminError as e:
            if not already_landed(e, a.node):
                self.log.warning(f"activate {a.tag} on {a.node} at epoch {a.epoch} failed: {e}")
                return
        except UNREACHABLE as e:
            # The intent stays in status and the next tick re-sends the same order.
            self.log.warning(f"activate {a.tag} on {a.node} at epoch {a.epoch}: unreachable ({e!r}); retried next tick")
            return
        intent = st.intent_from_json(self.status.get("intent"))
        took = f" {self.clock() - intent.detected:.2f} s after the first failed probe" if intent else ""
        self.log.info(f"tag {a.tag} active on {a.node} at epoch {a.epoch}{took}")
        if self.routing is not None:
            await self.routing.label(a.node, a.tag, True)

    async def _deactivate(self, a: p.DeactivateTag) -> None:
        if self.routing is not None:
            await self.routing.label(a.node, a.tag, False)
        admin = self.admins.get(a.node)
        if admin is None:
            return
        try:
            await admin.deactivate(a.tag)
        except (AdminError, *UNREACHABLE) as e:
            self.log.warning(f"deactivate {a.tag} on {a.node} failed: {e!r}")
            return
        self.log.info(f"tag {a.tag} deactivated on {a.node}")

    async def _route_owners(self, routing: Routing) -> None:
        """The SIP Service follows the owner recorded in status (and nobody else)."""
        for tag, rec in (self.status.get("tags") or {}).items():
            for node in routing.nodes():
                await routing.label(node, tag, node == rec.get("owner"))

    async def _set_status(self, a: p.SetStatus) -> None:
        assert self._tick is not None, "SetStatus comes from a tick's plan"
        t = self._tick
        cleared, self._cleared = self._cleared, {}
        await self._write(st.render(a, st.merge(self.status, cleared), t.now,
                                    health={n: s.health for n, s in t.nodes.items()}, fenced=t.fenced,
                                    switchovers=t.switchovers, pods=t.pods, generation=t.generation))

    async def _write(self, new: dict[str, Any]) -> None:
        patch = st.diff(self.status, new)
        if patch:
            await self.store.write(new, patch)
            self.status = new
