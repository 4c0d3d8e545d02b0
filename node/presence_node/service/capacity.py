"""Bounds on live state (#12): a request that would add a record is
refused, before anything is stored, once the node holds its cap of that
kind (503 with Retry-After: room comes back as records expire or are
removed) or once the request's source IP holds its share of live records
(403: that source must let some go first; another source is still served).

The counts come from :meth:`Storage.usage`, read without a round trip, so
the check costs a few dict reads per request.  With a shared database they
are the last periodic recount plus this node's own inserts since: other
nodes' inserts and every removal show at the next recount, so a cap may be
overshot by what the cluster adds in one ``limits.count_refresh_interval``,
and a freed share is seen only then.  Refreshes, modifies and removals of
held records are never refused: they add nothing.
"""

from __future__ import annotations

from typing import Protocol

from ..config import Limits
from ..sip.errors import RemoteSipError
from ..sip.status import Status
from ..storage import Storage

#: Seconds a client is told to wait when the node is full.
RETRY_AFTER = "60"

#: Per kind of new record: the node-wide caps it must fit under, as
#: (setting in Limits, Usage field).  A new publication may start a new
#: presentity, so both count.
_NODE_CAPS: dict[str, tuple[tuple[str, str], ...]] = {
    "publication": (("max_presentities", "presentities"), ("max_publications", "publications")),
    "subscription": (("max_subscriptions", "subscriptions"),),
    "registration": (("max_registrations", "registrations"),),
}


class CapacityMetrics(Protocol):
    def refused(self, limit: str) -> None: ...


class Capacity:
    def __init__(self, limits: Limits, storage: Storage, metrics: CapacityMetrics) -> None:
        self.limits = limits
        self.storage = storage
        self.metrics = metrics

    def admit(self, kind: str, host: str, *, per_source: bool = True) -> None:
        """Raise the refusal if a new ``kind`` record from ``host`` does not
        fit; ``per_source`` False for an authenticated backend (the admin
        API), which is not one address among many but the PBX itself."""
        usage = self.storage.usage()
        for setting, field in _NODE_CAPS[kind]:
            cap: int = getattr(self.limits, setting)
            if getattr(usage, field) >= cap:
                self.metrics.refused(setting)
                raise RemoteSipError(
                    f"the node holds its maximum of {cap} {field}",
                    status=Status.SERVICE_UNAVAILABLE,
                    headers=[("Retry-After", RETRY_AFTER)],
                )
        share = self.limits.max_records_per_source
        if per_source and usage.source(host) >= share:
            self.metrics.refused("max_records_per_source")
            raise RemoteSipError(f"{host} holds its maximum of {share} live records", status=Status.FORBIDDEN)

    def presentity_full(self, presentity: str, event: str) -> RemoteSipError:
        """The refusal of one more publication of a full presentity."""
        self.metrics.refused("max_publications_per_presentity")
        cap = self.limits.max_publications_per_presentity
        return RemoteSipError(f"{presentity} holds its maximum of {cap} {event} publications", status=Status.FORBIDDEN)
