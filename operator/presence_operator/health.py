"""The health detector: probe results over time in, a verdict per node out.

A node is judged ``DOWN`` only after ``detection_seconds`` of consecutive
failed probes, so one lost probe (a GC pause, a dropped packet) never
triggers a failover; one success makes it ``UP`` again.  Between the first
failure and the verdict the node is ``SUSPECT``: the planner neither moves
its tags nor gives it new ones.  A node never heard from is ``UNKNOWN``
(start-up must not look like a failure), and becomes ``DOWN`` after the
same delay of failures.

In Kubernetes a node's probe result is also its pod's state as the API
reports it (kept by the operator in a kopf index, see :func:`pod_view`): a
node is healthy only while its pod exists, is not being deleted, has an IP
and has ``Ready=True``, *and* its admin API answers (``/readyz``, ``/tags``).

Pure: time is passed in, nothing is read from a clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Verdict:
    health: Health
    #: When the current verdict began (the change of state).
    since: float
    #: Time of the first failed probe of the current run of failures; for a
    #: DOWN node it bounds the moment it died (within one probe period).
    failing_since: float | None
    last_ok: float | None
    #: A probe of the current failure run found the node alive with its
    #: storage down (``/readyz`` reason ``storage-unavailable``).  Kept for
    #: the run, so that one probe lost in the middle of a database outage
    #: does not make the node look dead while its peers come back.
    storage_down: bool = False


class HealthDetector:
    def __init__(self, detection_seconds: float) -> None:
        if detection_seconds <= 0:
            raise ValueError("detection_seconds must be positive")
        self.detection = detection_seconds
        self._v: dict[str, Verdict] = {}

    def observe(self, node: str, ok: bool, t: float, storage_down: bool = False) -> Verdict:
        """Feed one probe result taken at time ``t`` (``storage_down``: it
        said its storage is unavailable); returns the verdict."""
        old = self._v.get(node, Verdict(Health.UNKNOWN, t, None, None))
        if ok:
            new = Verdict(Health.UP, old.since if old.health is Health.UP else t, None, t)
        else:
            failing = old.failing_since if old.failing_since is not None else t
            if t - failing >= self.detection:
                health = Health.DOWN
            elif old.health is Health.UP:
                health = Health.SUSPECT
            else:
                health = old.health
            new = Verdict(health, old.since if health is old.health else t, failing, old.last_ok,
                          storage_down or (old.storage_down and old.failing_since is not None))
        self._v[node] = new
        return new

    def verdict(self, node: str) -> Verdict | None:
        return self._v.get(node)


@dataclass(frozen=True, slots=True)
class PodView:
    """What the operator keeps of a node's pod: the pods index's value."""

    name: str
    ip: str | None
    #: The kubelet's ``Ready`` condition is ``True``.
    ready: bool
    #: ``metadata.deletionTimestamp`` is set: the pod is going away.
    deleting: bool
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def probe_ip(self) -> str | None:
        """The address to probe the node's admin API at; None when there is
        nothing to probe (no IP yet, or the pod is being deleted)."""
        return None if self.deleting else self.ip


def pod_view(body: Mapping[str, Any]) -> PodView:
    """A pod as the API reports it → :class:`PodView`."""
    md = body.get("metadata") or {}
    st = body.get("status") or {}
    conds = st.get("conditions") or []
    return PodView(
        name=md.get("name") or "",
        ip=st.get("podIP") or None,
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds),
        deleting=bool(md.get("deletionTimestamp")),
        labels=dict(md.get("labels") or {}),
    )


def node_ok(pod: PodView | None, ready: bool, reachable: bool) -> bool:
    """One probe's result for the detector: the pod exists, has an IP, is
    not being deleted and is Ready in the API, and the node's admin API
    answered and said it is ready."""
    return pod is not None and pod.probe_ip is not None and pod.ready and ready and reachable
