"""The one failover decision: ``plan(spec, observed) -> [Action]``.

The executor (``executor.py``, which both drivers share: the kopf handlers
and the local-mode supervisor) collects an :class:`Observed`, calls
:func:`plan` and carries out the actions in order.  The rules, and why:

- **Fenced moves.** A tag whose owner is judged down (or fenced, or asked to
  switch over) is activated on a healthy node of its location with an epoch
  above every epoch known for it, so the nodes refuse any older order.  The
  old owner is deactivated first when it is reachable; a node's deactivation
  itself takes one epoch, so the activation then uses ``known + 2``.
- **Intent first.** ``RecordIntent`` comes before any order.  A restarted
  driver finds the intent in status and rolls it forward with the *same*
  epochs (re-sending an order that already landed changes nothing); it never
  starts a second move of a tag.
- **One owner.** A plan activates a tag at most once; claims at a lower epoch
  than the winner's are stale and get deactivated.
- **No storm.** With no healthy candidate (a whole location down, as when the
  database fails) nothing moves: a ``FailoverDeferred`` event and a Degraded
  condition instead.  Suspect nodes (failing, not yet judged) neither lose
  nor gain tags.
- **A database outage is not a node failure.** An owner that runs but
  cannot reach its storage (``storage_down``: its ``/readyz`` says so)
  keeps its tags unless another node of its location has been serving for
  ``detectionSeconds`` of its failure: only then is the fault its own.
  When the shared database of a location goes, every node fails alike, and
  when it returns they become ready a moment apart; moving tags to the
  first one back would be a needless failover at a new epoch
  (``StorageUnavailable`` event and Degraded instead).
- **Policy.** ``manual``: failures give events only; fencing and switchover
  are explicit orders and are still carried out.  Failback (``automatic``)
  returns a tag to its home once the home has been up for
  ``detectionSeconds``; a switchover request pins the tag while present.

Pure: no I/O, no clock; time comes in ``Observed.now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping, Union

from . import spec as specs
from .health import Health


# -- the vocabulary ---------------------------------------------------------------
# String enums: their values are what status, Events and logs show, and what
# the JSON status is read back from.


class Reason(StrEnum):
    """Why tags move: an intent's and a failover record's reason."""

    NODE_DOWN = "node-down"
    FENCED = "fenced"
    SWITCHOVER = "switchover"
    FAILBACK = "failback"
    #: Placing a tag nobody owns (a new cluster): not counted as a failover.
    UNOWNED = "unowned"


class Phase(StrEnum):
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILING_OVER = "FailingOver"


class Condition(StrEnum):
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILING_OVER = "FailingOver"


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class EventReason(StrEnum):
    """The ``reason`` of the Events the planner (and a driver) emit."""

    FAILOVER = "Failover"
    FENCED_NODE_VACATED = "FencedNodeVacated"
    SWITCHOVER = "Switchover"
    FAILBACK = "Failback"
    TAG_PLACED = "TagPlaced"
    FAILOVER_COMPLETE = "FailoverComplete"
    FAILOVER_ABANDONED = "FailoverAbandoned"
    FAILOVER_DEFERRED = "FailoverDeferred"
    STALE_EPOCH = "StaleEpoch"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    SWITCHOVER_REJECTED = "SwitchoverRejected"
    #: A manual-operation annotation the kopf driver could not read.
    BAD_ANNOTATION = "BadAnnotation"


# -- what the driver observes ------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    location: str
    health: Health
    #: The admin API answered the last probe: orders can reach the node.
    reachable: bool
    #: When the health verdict last changed.
    since: float = 0.0
    #: First failed probe of the current failure run (DOWN/SUSPECT nodes).
    failing_since: float | None = None
    #: Tags the node reports active here, with their epochs.
    active: Mapping[str, int] = field(default_factory=dict)
    #: The process answers but says its storage does not (``/readyz``
    #: reason ``storage-unavailable``).
    storage_down: bool = False


@dataclass(frozen=True, slots=True)
class TagRecord:
    """A tag's owner as recorded in status."""

    owner: str | None
    epoch: int
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Move:
    tag: str
    source: str | None
    target: str
    epoch: int
    #: Whether the source is deactivated before the activation.
    deactivate: bool


@dataclass(frozen=True, slots=True)
class Intent:
    """A failover in progress, recorded in status before any order."""

    moves: tuple[Move, ...]
    reason: Reason
    started: float
    #: When the failure began (first failed probe), for the time taken.
    detected: float


@dataclass(frozen=True, slots=True)
class FailoverRecord:
    source: str | None
    target: str
    tags: tuple[str, ...]
    reason: Reason
    time: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Observed:
    now: float
    nodes: Mapping[str, NodeState]
    #: Per tag, owner and epoch as recorded in status.
    tags: Mapping[str, TagRecord] = field(default_factory=dict)
    intent: Intent | None = None
    fenced: frozenset[str] = frozenset()
    #: Switchover requests: tag -> node.
    switchovers: Mapping[str, str] = field(default_factory=dict)
    last_failover: FailoverRecord | None = None
    failover_count: int = 0


# -- what the driver does ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivateTag:
    tag: str
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class DeactivateTag:
    tag: str
    node: str


@dataclass(frozen=True, slots=True)
class RecordIntent:
    intent: Intent


@dataclass(frozen=True, slots=True)
class ClearIntent:
    #: The completed failover (None when the intent was abandoned).
    completed: FailoverRecord | None


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    reason: EventReason
    message: str


@dataclass(frozen=True, slots=True)
class SetStatus:
    phase: Phase
    conditions: Mapping[Condition, bool]
    #: tag -> (owner, epoch) as resolved from the nodes' reports.
    tags: Mapping[str, TagRecord]
    #: node -> (up, tags active there)
    nodes: Mapping[str, tuple[bool, tuple[str, ...]]]
    ready_nodes: int
    total_nodes: int
    last_failover: FailoverRecord | None
    failover_count: int


Action = Union[ActivateTag, DeactivateTag, RecordIntent, ClearIntent, Event, SetStatus]


# -- the planner -------------------------------------------------------------


@dataclass
class _Ctx:
    spec: specs.PresenceClusterSpec
    obs: Observed
    tags: list[specs.Tag]
    order: dict[str, int]  # node -> ordinal
    owner: dict[str, TagRecord]  # resolved owner per tag
    known: dict[str, int]  # highest epoch known per tag
    actions: list[Action]
    degraded: list[str]


def plan(spec: specs.PresenceClusterSpec, observed: Observed) -> list[Action]:
    ctx = _context(spec, observed)
    _stale_claims(ctx)
    intent = observed.intent
    last, count = observed.last_failover, observed.failover_count
    if intent is not None:
        status, record = _roll_forward(ctx, intent)
        if status == "pending":
            _set_status(ctx, failing_over=True, last=last, count=count)
            return ctx.actions
        if record is not None and record.reason != Reason.UNOWNED:
            last, count = record, count + 1
    moves, reason, detected = _decide(ctx)
    if reason is not None:
        new = Intent(tuple(moves), reason, observed.now, detected)
        ctx.actions.append(RecordIntent(new))
        for m in moves:
            if m.deactivate and m.source is not None:
                ctx.actions.append(DeactivateTag(m.tag, m.source))
            ctx.actions.append(ActivateTag(m.tag, m.target, m.epoch))
            ctx.actions.append(Event(EventType.WARNING if reason == Reason.NODE_DOWN else EventType.NORMAL,
                                     _EVENTS[reason],
                                     f"tag {m.tag}: {m.source or '-'} -> {m.target} at epoch {m.epoch} ({reason})"))
    _set_status(ctx, failing_over=bool(moves), last=last, count=count)
    return ctx.actions


#: The Event of a new intent, per reason.
_EVENTS = {
    Reason.NODE_DOWN: EventReason.FAILOVER,
    Reason.FENCED: EventReason.FENCED_NODE_VACATED,
    Reason.SWITCHOVER: EventReason.SWITCHOVER,
    Reason.FAILBACK: EventReason.FAILBACK,
    Reason.UNOWNED: EventReason.TAG_PLACED,
}


def _context(spec: specs.PresenceClusterSpec, obs: Observed) -> _Ctx:
    tags = specs.tags(spec)
    order = {n.name: n.ordinal for n in specs.nodes(spec)}
    owner: dict[str, TagRecord] = {}
    known: dict[str, int] = {}
    for t in tags:
        rec = obs.tags.get(t.name, TagRecord(None, 0))
        claims = [(n.active[t.name], n.name) for n in obs.nodes.values() if t.name in n.active]
        epochs = [rec.epoch, *(e for e, _ in claims)]
        if obs.intent is not None:
            epochs += [m.epoch for m in obs.intent.moves if m.tag == t.name]
        known[t.name] = max(epochs)
        # The highest epoch wins, whether a node reports it or status
        # recorded it (an unreachable owner reports nothing, yet still owns
        # the tag); a claim below it is stale.
        best = max(claims, default=None)
        if best is not None and best[0] >= rec.epoch:
            epoch, name = best
            since = rec.since if (rec.owner, rec.epoch) == (name, epoch) else obs.now
            owner[t.name] = TagRecord(name, epoch, since)
        elif rec.owner is not None and (n := obs.nodes.get(rec.owner)) is not None and n.reachable:
            # The recorded owner answers and no longer claims it (deactivated).
            owner[t.name] = TagRecord(None, rec.epoch, obs.now)
        else:
            owner[t.name] = rec
    return _Ctx(spec, obs, tags, order, owner, known, [], [])


def _stale_claims(ctx: _Ctx) -> None:
    """A node claiming a tag below the winner's epoch missed a move (it was
    partitioned, or an order was lost): tell it to give the tag up."""
    for t in ctx.tags:
        win = ctx.owner[t.name]
        for n in sorted(ctx.obs.nodes.values(), key=lambda n: ctx.order.get(n.name, 1 << 30)):
            if t.name in n.active and n.name != win.owner and n.reachable:
                ctx.actions.append(DeactivateTag(t.name, n.name))
                ctx.actions.append(Event(EventType.WARNING, EventReason.STALE_EPOCH,
                                         f"{n.name} reports tag {t.name} at epoch {n.active[t.name]}, "
                                         f"owner is {win.owner} at epoch {win.epoch}: deactivating"))


def _node(ctx: _Ctx, name: str | None) -> NodeState | None:
    return ctx.obs.nodes.get(name) if name is not None else None


def _eligible(ctx: _Ctx, name: str | None) -> bool:
    n = _node(ctx, name)
    return n is not None and n.health is Health.UP and n.name not in ctx.obs.fenced


def _roll_forward(ctx: _Ctx, intent: Intent) -> tuple[str, FailoverRecord | None]:
    """``pending`` (orders re-sent with the recorded epochs), ``done`` or
    ``abandoned`` (the intent is cleared; planning starts afresh)."""
    obs = ctx.obs
    done = all(ctx.owner[m.tag].owner == m.target and ctx.owner[m.tag].epoch >= m.epoch for m in intent.moves)
    if done:
        targets = sorted({m.target for m in intent.moves}, key=lambda n: ctx.order.get(n, 0))
        sources = sorted({m.source or "-" for m in intent.moves})
        record = FailoverRecord(
            source=", ".join(sources) if sources != ["-"] else None, target=", ".join(targets),
            tags=tuple(m.tag for m in intent.moves), reason=intent.reason, time=obs.now,
            seconds=round(obs.now - intent.detected, 3),
        )
        # Placing a tag nobody owned (a new cluster) is not a failover: it
        # is neither counted nor shown as the last one.
        ctx.actions.append(ClearIntent(record if intent.reason != Reason.UNOWNED else None))
        ctx.actions.append(Event(EventType.NORMAL, EventReason.FAILOVER_COMPLETE,
                                 f"tags {', '.join(record.tags)} active on {record.target} ({intent.reason}, "
                                 f"{record.seconds:.2f} s)"))
        return "done", record
    for m in intent.moves:
        cur = ctx.owner[m.tag]
        landed = cur.owner == m.target and cur.epoch >= m.epoch
        overtaken = not landed and cur.epoch >= m.epoch
        if overtaken or (not landed and not _eligible(ctx, m.target)):
            ctx.actions.append(ClearIntent(None))
            ctx.actions.append(Event(EventType.WARNING, EventReason.FAILOVER_ABANDONED,
                                     f"tag {m.tag}: move to {m.target} at epoch {m.epoch} cannot complete; replanning"))
            return "abandoned", None
    for m in intent.moves:
        cur = ctx.owner[m.tag]
        if cur.owner == m.target and cur.epoch >= m.epoch:
            continue
        src = _node(ctx, m.source)
        if m.deactivate and src is not None and src.reachable and m.tag in src.active:
            ctx.actions.append(DeactivateTag(m.tag, src.name))
        ctx.actions.append(ActivateTag(m.tag, m.target, m.epoch))
    return "pending", None


def _decide(ctx: _Ctx) -> tuple[list[Move], Reason | None, float]:
    """The moves of one new intent (all of one reason), or none.  Order of
    precedence: fencing, node down, switchover, unowned, failback."""
    obs, policy = ctx.obs, ctx.spec.failover
    load = {name: 0 for name in obs.nodes}
    for rec in ctx.owner.values():
        if rec.owner in load:
            load[rec.owner] += 1
    wanted: dict[Reason, list[tuple[specs.Tag, str]]] = {r: [] for r in Reason}
    for t in ctx.tags:
        cur = ctx.owner[t.name]
        owner = _node(ctx, cur.owner)
        asked = obs.switchovers.get(t.name)
        if cur.owner is not None and cur.owner in obs.fenced:
            wanted[Reason.FENCED].append((t, f"owner {cur.owner} is fenced"))
        elif cur.owner is not None and owner is not None and owner.health is Health.DOWN and _outage(ctx, owner):
            ctx.actions.append(Event(
                EventType.WARNING, EventReason.STORAGE_UNAVAILABLE,
                f"tag {t.name}: owner {owner.name} runs but cannot reach its storage, as no node of location "
                f"{owner.location} could for long: a database outage, not a node failure; no move"))
            ctx.degraded.append(t.name)
        elif cur.owner is not None and (owner is None or owner.health is Health.DOWN):
            wanted[Reason.NODE_DOWN].append((t, f"owner {cur.owner} is down"))
        elif asked is not None and asked != cur.owner:
            wanted[Reason.SWITCHOVER].append((t, asked))
        elif cur.owner is None:
            wanted[Reason.UNOWNED].append((t, "no owner"))
        elif (policy.failback == "automatic" and asked is None and cur.owner != t.home
              and _eligible(ctx, t.home) and obs.now - ctx.obs.nodes[t.home].since >= policy.detection_seconds):
            wanted[Reason.FAILBACK].append((t, t.home))
    for reason in (Reason.FENCED, Reason.NODE_DOWN, Reason.SWITCHOVER, Reason.UNOWNED, Reason.FAILBACK):
        items = wanted[reason]
        if not items:
            continue
        if reason in (Reason.NODE_DOWN, Reason.UNOWNED) and policy.policy == "manual":
            for t, why in items:
                ctx.actions.append(Event(EventType.WARNING, EventReason.FAILOVER_DEFERRED,
                                         f"tag {t.name}: {why}; policy is manual"))
                ctx.degraded.append(t.name)
            continue
        moves: list[Move] = []
        for t, arg in items:
            target = arg if reason in (Reason.SWITCHOVER, Reason.FAILBACK) else _pick(ctx, t, load)
            if reason == Reason.SWITCHOVER and not _valid_switchover(ctx, t, arg):
                continue
            if target is None:
                _defer(ctx, t, arg)
                continue
            moves.append(_move(ctx, t, target))
            src = ctx.owner[t.name].owner
            if src in load:
                load[src] -= 1
            load[target] = load.get(target, 0) + 1
        if moves:
            detected = obs.now
            if reason == Reason.NODE_DOWN:
                detected = min((n.failing_since for m in moves if (n := _node(ctx, m.source)) is not None
                                and n.failing_since is not None), default=obs.now)
            return moves, reason, detected
    return [], None, obs.now


def _outage(ctx: _Ctx, n: NodeState) -> bool:
    """Is ``n`` failing only because of its storage, as its location's other
    nodes did too?  It is alive with its storage down, and no other node of
    the location has been up for ``detectionSeconds`` since ``n`` began to
    fail (one that has reaches the database: the fault is ``n``'s own)."""
    if not n.storage_down:
        return False
    failing = n.failing_since if n.failing_since is not None else ctx.obs.now
    detection = ctx.spec.failover.detection_seconds
    return not any(
        c.location == n.location and c.name != n.name and c.health is Health.UP
        and ctx.obs.now - max(c.since, failing) >= detection
        for c in ctx.obs.nodes.values()
    )


def _pick(ctx: _Ctx, t: specs.Tag, load: Mapping[str, int]) -> str | None:
    """A healthy node of the tag's location, fewest tags first (so a load
    balancing survivor set shares a dead node's tags), then in spec order."""
    if not t.movable:
        return None
    src = ctx.owner[t.name].owner
    cands = [n for n in ctx.obs.nodes.values()
             if n.location == t.location and n.name != src and _eligible(ctx, n.name)]
    if not cands:
        return None
    if _eligible(ctx, t.home) and t.home != src:
        return t.home
    return min(cands, key=lambda n: (load.get(n.name, 0), ctx.order.get(n.name, 1 << 30))).name


def _defer(ctx: _Ctx, t: specs.Tag, why: str) -> None:
    if not t.movable:
        msg = f"tag {t.name}: {why}; mode {ctx.spec.mode} keeps a node's data on that node, no failover target"
    else:
        out = sorted(n.name + (" (fenced)" if n.name in ctx.obs.fenced else "")
                     for n in ctx.obs.nodes.values() if n.location == t.location and not _eligible(ctx, n.name))
        msg = f"tag {t.name}: {why}; no healthy node in location {t.location} (not up or fenced: {', '.join(out)})"
    ctx.actions.append(Event(EventType.WARNING, EventReason.FAILOVER_DEFERRED, msg))
    ctx.degraded.append(t.name)


def _valid_switchover(ctx: _Ctx, t: specs.Tag, target: str) -> bool:
    n = _node(ctx, target)
    why = None
    if n is None:
        why = "no such node"
    elif not t.movable:
        why = f"mode {ctx.spec.mode} cannot move tags"
    elif n.location != t.location:
        why = f"{target} is not in location {t.location}"
    elif not _eligible(ctx, target):
        why = f"{target} is not up or is fenced"
    if why is not None:
        ctx.actions.append(Event(EventType.WARNING, EventReason.SWITCHOVER_REJECTED,
                                 f"tag {t.name} -> {target}: {why}"))
        return False
    return True


def _move(ctx: _Ctx, t: specs.Tag, target: str) -> Move:
    src = _node(ctx, ctx.owner[t.name].owner)
    deactivate = src is not None and src.reachable and t.name in src.active
    return Move(t.name, ctx.owner[t.name].owner, target, ctx.known[t.name] + (2 if deactivate else 1), deactivate)


def _set_status(ctx: _Ctx, *, failing_over: bool, last: FailoverRecord | None, count: int) -> None:
    obs = ctx.obs
    nodes = {
        n.name: (n.health is Health.UP, tuple(sorted(n.active)))
        for n in sorted(obs.nodes.values(), key=lambda n: ctx.order.get(n.name, 1 << 30))
    }
    total = len(specs.nodes(ctx.spec))
    ready = sum(1 for up, _ in nodes.values() if up)
    unowned = [t.name for t in ctx.tags if ctx.owner[t.name].owner is None]
    degraded = bool(ctx.degraded or unowned or ready < total)
    phase = Phase.FAILING_OVER if failing_over else (Phase.DEGRADED if degraded else Phase.READY)
    ctx.actions.append(SetStatus(
        phase=phase,
        conditions={Condition.READY: ready == total and not unowned, Condition.DEGRADED: degraded,
                    Condition.FAILING_OVER: failing_over},
        tags={t.name: ctx.owner[t.name] for t in ctx.tags},
        nodes=nodes, ready_nodes=ready, total_nodes=total, last_failover=last, failover_count=count,
    ))

