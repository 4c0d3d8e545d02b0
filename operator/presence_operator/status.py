"""The PresenceCluster status: one layout, both drivers (pure).

The kopf driver keeps it as the CR's ``.status`` (merge patches of the
status subresource), local mode as ``status.json``; both go through the
executor, which uses this module to turn the planner's :class:`SetStatus`
into the document (:func:`render`), to read the planner's inputs back from it
(:func:`observed`: recorded owners, the intent a stopped driver left, the
last failover), and to compute what to write (:func:`diff`, a JSON merge
patch, RFC 7386, which :func:`merge` applies as the API server does).

The layout is the CRD's status schema (``crds/presenceclusters.yaml``)::

    phase                Ready | Degraded | FailingOver
    conditions           [{type, status "True"/"False", reason (the phase), lastTransitionTime}]
    ready, tagOwners     "2/2", "vip=l1-0": the printer columns
    readyNodes, totalNodes
    nodes                {node: {ready, health, tags, pod (Kubernetes)}}
    tags                 {tag: {owner (absent when nobody owns it), epoch, since}}
    fenced, switchovers  the manual operations in force: [node], {tag: node}
    failoverCount
    lastFailover         {from ("-": none), to, tags, reason, time, seconds, summary}; kept once set
    intent               a failover in progress (absent when none)
    observedGeneration   (Kubernetes)

Times are RFC 3339 strings (UTC, milliseconds), the intent's excepted
(seconds since the epoch: it is read back, not shown).  A document holds no
``None`` as a member's value: in a merge patch ``None`` removes the member.

Pure: no I/O, no clock; time comes in as arguments.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from .health import Health
from .planner import FailoverRecord, Intent, Move, NodeState, Observed, Reason, SetStatus, TagRecord


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(s: str | None) -> float:
    if not s:
        return 0.0
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# -- the planner's records as JSON -------------------------------------------------


def record_to_json(r: FailoverRecord) -> dict[str, Any]:
    return {"from": r.source or "-", "to": r.target, "tags": list(r.tags), "reason": str(r.reason),
            "time": iso(r.time), "seconds": r.seconds,
            "summary": f"{','.join(r.tags)} {r.source or '-'}->{r.target} {r.seconds:.1f}s ({r.reason})"}


def record_from_json(d: Mapping[str, Any] | None) -> FailoverRecord | None:
    if not d:
        return None
    src = d.get("from")
    return FailoverRecord(None if src in (None, "-") else src, d["to"], tuple(d["tags"]), Reason(d["reason"]),
                          from_iso(d.get("time")), float(d["seconds"]))


def intent_to_json(i: Intent) -> dict[str, Any]:
    return {"reason": str(i.reason), "started": i.started, "detected": i.detected,
            "moves": [{"tag": m.tag, "from": m.source, "to": m.target, "epoch": m.epoch, "deactivate": m.deactivate}
                      for m in i.moves]}


def intent_from_json(d: Mapping[str, Any] | None) -> Intent | None:
    if not d:
        return None
    moves = tuple(Move(m["tag"], m.get("from"), m["to"], int(m["epoch"]), bool(m["deactivate"])) for m in d["moves"])
    return Intent(moves, Reason(d["reason"]), float(d["started"]), float(d["detected"]))


# -- status <-> planner ---------------------------------------------------------------


def observed(status: Mapping[str, Any], now: float, nodes: Mapping[str, NodeState], *,
             fenced: frozenset[str] = frozenset(), switchovers: Mapping[str, str] | None = None) -> Observed:
    """The planner's input: this tick's nodes, and what status recorded."""
    return Observed(
        now=now, nodes=nodes, fenced=fenced, switchovers=dict(switchovers or {}),
        tags={t: TagRecord(r.get("owner"), int(r.get("epoch", 0)), from_iso(r.get("since")))
              for t, r in (status.get("tags") or {}).items()},
        intent=intent_from_json(status.get("intent")),
        last_failover=record_from_json(status.get("lastFailover")),
        failover_count=int(status.get("failoverCount") or 0),
    )


def render(a: SetStatus, previous: Mapping[str, Any], now: float, *, health: Mapping[str, Health],
           fenced: frozenset[str] = frozenset(), switchovers: Mapping[str, str] | None = None,
           pods: Mapping[str, str] | None = None, generation: int | None = None) -> dict[str, Any]:
    """The status after ``a``: ``previous`` with the planner's view written
    over it.  A condition keeps its ``lastTransitionTime`` and a tag its
    ``since`` while unchanged; ``pods`` (node -> pod name) and
    ``generation`` are the Kubernetes driver's."""
    old_conds = {c["type"]: c for c in previous.get("conditions") or []}
    conds = []
    for t, v in a.conditions.items():
        s = "True" if v else "False"
        prev = old_conds.get(t)
        since = prev["lastTransitionTime"] if prev and prev.get("status") == s else iso(now)
        conds.append({"type": str(t), "status": s, "reason": str(a.phase), "lastTransitionTime": since})
    old_tags = previous.get("tags") or {}
    tags = {}
    for t, r in a.tags.items():
        prev = old_tags.get(t) or {}
        same = (prev.get("owner"), prev.get("epoch")) == (r.owner, r.epoch)
        rec: dict[str, Any] = {"owner": r.owner} if r.owner is not None else {}
        tags[t] = {**rec, "epoch": r.epoch,
                   "since": prev["since"] if same and prev.get("since") else iso(r.since or now)}
    nodes = {}
    for n, (up, tg) in a.nodes.items():
        pod = {"pod": pods[n]} if pods and n in pods else {}
        nodes[n] = {**pod, "ready": up, "health": health[n].value, "tags": list(tg)}
    new = {
        **previous,
        "phase": str(a.phase),
        "conditions": conds,
        "ready": f"{a.ready_nodes}/{a.total_nodes}",
        "readyNodes": a.ready_nodes,
        "totalNodes": a.total_nodes,
        "tagOwners": ", ".join(f"{t}={r.owner or '-'}" for t, r in a.tags.items()),
        "nodes": nodes,
        "tags": tags,
        "fenced": sorted(fenced),
        "switchovers": dict(sorted((switchovers or {}).items())),
        "failoverCount": a.failover_count,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    if a.last_failover is not None:  # none: the previous one (if any) stays shown
        new["lastFailover"] = record_to_json(a.last_failover)
    return new


# -- merge patches (RFC 7386) -------------------------------------------------------------


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that turns ``old`` into ``new`` (documents without
    ``None`` members): changed members only, nested objects member by member,
    lists whole, ``None`` for a member ``new`` lacks."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k in old and old[k] == v:
            continue
        o = old.get(k)
        patch[k] = diff(o, v) if isinstance(o, Mapping) and isinstance(v, Mapping) else v
    return patch


def merge(doc: Any, patch: Any) -> Any:
    """``patch`` applied to ``doc`` as a JSON merge patch."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(doc) if isinstance(doc, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out
