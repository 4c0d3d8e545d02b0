"""The storage interface every backend implements.

Each method is one atomic step, so a PostgreSQL backend maps each to one
statement or transaction: the etag compare-and-swap of S45, the
increment-and-return of NOTIFY CSeq and document version (never a
read-modify-write of an in-memory copy), and expiry that deletes and
returns in one step so that only one caller ever notifies for a record.

Records handed out are snapshots: callers must not mutate them.

Timer-driven duties are fenced by sharing tags: the expiry methods and the
owner-only delete take the acting node's id and touch only records whose
tag that node owns *in storage* at that moment, so two nodes that both
believe they own a tag still expire each record once.
"""

from __future__ import annotations

import contextvars
import time
from typing import Collection, Mapping, Protocol

from .records import Publication, Registration, Subscription, TagState, Usage


class StorageUnavailable(OSError):
    """The storage cannot be reached (the node does not start, or is not
    ready).  Any method may raise it when the backend is out of reach (a
    lost connection, no connection within the pool's wait), as opposed to a
    statement's own failure; callers answer it "try later" (SIP and admin API: 503 with Retry-After)."""


class RequestExpired(StorageUnavailable):
    """The request's client has given up on it (its transaction timed out)
    before the statement that would apply it ran: it was not applied."""


#: When the request being served stops mattering, as ``time.time()``: its
#: arrival plus 64*T1, when its client's transaction has timed out (RFC 3261
#: Timer F) and the client may have retried or moved on.  Set by the SIP
#: dispatcher around a request's handler; None for work of the node's own
#: (expiry, NOTIFYs, federation, admin).  A shared backend checks it right
#: before the statement that applies a request, so that a request held up
#: (a slow database, a queue) is never applied after its client gave up.
request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)


def check_deadline(deadline: float | None) -> None:
    """Raise :class:`RequestExpired` if ``deadline`` has passed."""
    if deadline is not None and time.time() >= deadline:
        raise RequestExpired("the request's client has given up (older than its transaction timeout)")


def outside_request() -> contextvars.Context:
    """A copy of the current context with no request deadline: for work a
    request starts but that outlives it (a NOTIFY and its retransmissions,
    federation messages), which must not be refused as the request's."""
    ctx = contextvars.copy_context()
    ctx.run(request_deadline.set, None)
    return ctx


class UnknownTag(LookupError):
    """No sharing tag of that name exists (admin API: 404)."""


class PresentityFull(Exception):
    """A presentity already holds the most live publications of one package
    allowed (``limits.max_publications_per_presentity``): SIP 403."""


class StaleEpoch(ValueError):
    """An activation carried an epoch not above the current one (409)."""

    def __init__(self, current: TagState) -> None:
        super().__init__(f"tag {current.name} is at epoch {current.epoch}")
        self.current = current


class Storage(Protocol):
    #: Whether other nodes serve these records when this node stops (a
    #: shared database), or they die with it (memory).
    shared: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the storage cannot serve requests now (readiness)."""

    # -- publications ------------------------------------------------------

    async def insert_publication_watched(
        self, pub: Publication, now: float, sender: str | None = None, *, cap: int | None = None
    ) -> list[Subscription]:
        """Store a new publication (its etag is fresh and unique), then
        return the live watchers of its presentity and package
        (:meth:`watchers`, routed for ``sender``), as one step: a subscription made concurrently
        (:meth:`insert_subscription_state`) is either returned here or sees
        this publication.

        With ``cap``: :class:`PresentityFull`, and nothing stored, when the
        presentity and package already hold ``cap`` publications (counted
        in the same step, expired ones not yet swept included: they still
        take room).  Two concurrent inserts may both pass at ``cap - 1``."""

    async def replace_publication(
        self, presentity: str, event: str, etag: str, now: float, *,
        new_etag: str, expires_at: float, body: bytes | None = None, content_type: str | None = None,
    ) -> Publication | None:
        """Refresh (``body`` None) or modify a live publication atomically.

        Returns the updated record, or None if ``etag`` names no live
        publication of (presentity, event): the caller answers 412 (S39).
        """

    async def delete_publication(self, presentity: str, event: str, etag: str, now: float) -> Publication | None:
        """Remove a live publication; None if there was none (412)."""

    async def publications(self, presentity: str, event: str, now: float) -> list[Publication]:
        """Live publications of one presentity and package, oldest first."""

    async def expire_publications(self, now: float, node: str) -> list[Publication]:
        """Delete and return publications expired at ``now`` whose tag
        ``node`` owns.  Each record is returned to one caller only."""

    # -- federation (replicated publications) -------------------------------

    async def apply_remote(self, presentity: str, event: str, old_etag: str | None, new: Publication | None) -> bool:
        """A publication changed at another location: drop ``old_etag``
        (whatever its origin: a refresh through that location supersedes our
        copy or our own record) and store ``new`` (keyed by its etag, which
        is unique cluster-wide).  True if anything changed."""

    async def replace_replicas(
        self, origin: str, keys: Collection[tuple[str, str]], pubs: list[Publication], now: float
    ) -> set[tuple[str, str]]:
        """Make our copies from ``origin`` for ``keys`` exactly ``pubs`` (a
        resync); returns the keys whose state changed."""

    async def replica_keys(self, origin: str) -> set[tuple[str, str]]:
        """The keys we hold copies of from ``origin``."""

    async def held_publications(self, keys: Collection[tuple[str, str]] | None, now: float) -> list[Publication]:
        """Live publications received here by SIP (``origin`` ""), for
        ``keys`` or all: what this location answers queries and syncs with."""

    async def forget_replicas(self, presentity: str, event: str) -> None:
        """Drop the copies of (presentity, event) from other locations (its
        last local watcher left: nobody here will keep them current)."""

    async def watched_keys(self, events: Collection[str], now: float) -> set[tuple[str, str]]:
        """(presentity, event) pairs of ``events`` with a live subscription."""

    # -- subscriptions -----------------------------------------------------

    async def insert_subscription(self, sub: Subscription) -> None: ...

    async def insert_subscription_state(
        self, sub: Subscription, now: float, watchers_of: str | None = None
    ) -> tuple[list[Publication], int]:
        """:meth:`insert_subscription`, then, as one step, the live
        publications of its presentity and package (oldest first: its first
        NOTIFY) and the number of live subscriptions of package
        ``watchers_of`` to the same presentity (0 when None).  A
        publication written concurrently by any method is either returned
        here or its writer's later :meth:`watchers` read sees ``sub``; a
        subscription to the same presentity made concurrently is either
        counted here or sees ``sub``."""

    async def subscription(self, sub_id: str) -> Subscription | None: ...

    async def refresh_subscription(
        self, sub_id: str, *, expires_at: float, remote_cseq: int, contact: str | None = None
    ) -> Subscription | None:
        """Extend a subscription; None if it no longer exists (481)."""

    async def delete_subscription(self, sub_id: str, *, owner: str | None = None) -> Subscription | None:
        """Remove a subscription; with ``owner``, only if that node owns its
        tag (a failed NOTIFY seen by a non-owner changes nothing)."""

    async def watchers(self, presentity: str, event: str, now: float, sender: str | None = None) -> list[Subscription]:
        """Live subscriptions to one presentity and package.

        ``sender``: the node about to NOTIFY them for a change.  A shared
        storage returns only those under tags that node owns and, in the
        same step, queues the change for the owners of the others (only the
        owner of a subscription's tag sends its NOTIFYs: storage/changes.py);
        a storage of one node returns them all."""

    async def next_notify(self, sub_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        """Atomically increment CSeq and document version of each subscription.

        Returns ``{id: (cseq, version)}`` where ``cseq`` is the CSeq to send
        and ``version`` the document version to send; ids that no longer
        exist are absent.  S09, S61, S67: versions start at 0.
        """

    async def next_notify_state(
        self, sub_ids: Collection[str], presentity: str, event: str, now: float
    ) -> tuple[dict[str, tuple[int, int]], list[Publication]]:
        """:meth:`next_notify` of ``sub_ids`` and :meth:`publications` of
        (presentity, event) in one step: what NOTIFYs of a state change
        need.  A publication change committed after the read sends its own
        NOTIFYs (the notifier then sends the latest state)."""

    async def expire_subscriptions(self, now: float, node: str) -> list[Subscription]:
        """Delete and return subscriptions expired at ``now`` whose tag
        ``node`` owns (see :meth:`expire_publications`)."""

    # -- registrations (D5) ------------------------------------------------

    async def set_binding(self, reg: Registration) -> None: ...

    async def delete_binding(self, aor: str, contact: str) -> None: ...

    async def bindings(self, aor: str, now: float) -> list[Registration]: ...

    async def expire_registrations(self, now: float, node: str) -> list[Registration]:
        """Delete and return bindings expired at ``now`` whose tag ``node``
        owns (see :meth:`expire_publications`)."""

    async def list_registrations(self, now: float, *, aor: str | None, offset: int, limit: int) -> list[Registration]:
        """Live bindings ordered by AOR and contact (admin listing)."""

    # -- live-state limits (#12) -------------------------------------------

    def usage(self) -> Usage:
        """What is held now, without a round trip: cheap enough to ask
        before every new record."""

    async def refresh_usage(self, source_floor: int) -> None:
        """Recount (a shared database: one statement over every table, run
        every ``limits.count_refresh_interval``, never per request; other
        nodes' writes and removals show from then on).  Sources with fewer
        than ``source_floor`` records may be left out (counted 0)."""

    # -- sharing tags -----------------------------------------------------------

    async def ensure_tags(self, configured: Mapping[str, bool], node: str, now: float) -> None:
        """Create the configured tags that do not exist yet; a tag configured
        active (True) is taken only if nobody owns it, never from a live
        owner, and never by deleting anything."""

    async def tags(self) -> list[TagState]: ...

    async def activate_tag(self, name: str, node: str, now: float, epoch: int | None = None) -> TagState:
        """Make ``node`` the owner at the next epoch (or at ``epoch``, which
        must exceed the current one: :class:`StaleEpoch`).  The previous
        owner becomes a backup.  :class:`UnknownTag` if there is no such tag."""

    async def deactivate_tag(self, name: str, node: str, now: float) -> TagState:
        """Give the tag up if ``node`` owns it (the next epoch, no owner)."""

    # -- watcher rules (#15.3) ----------------------------------------------

    async def set_watcher_rule(self, presentity: str, watcher: str, allow: bool | None) -> bool:
        """Allow or deny ``watcher`` (AORs) for ``presentity``; None removes
        the rule.  Whether there was a rule before."""

    async def watcher_rule(self, presentity: str, watcher: str) -> bool | None:
        """True allowed, False denied, None: no rule (the policy decides)."""

    async def watcher_rules(self, presentity: str) -> dict[str, bool]: ...

    # -- admin listing -----------------------------------------------------

    async def list_presentities(self, now: float, *, event: str | None, offset: int, limit: int) -> list[Publication]: ...

    async def list_subscriptions(
        self, now: float, *, presentity: str | None, watcher: str | None, event: str | None, offset: int, limit: int
    ) -> list[Subscription]: ...

    async def counts(self) -> tuple[int, int]:
        """(live subscriptions, presentities with a live publication)."""

    def queue_delay(self) -> float:
        """Seconds requests have waited for the database beyond the
        statements under way (0 for a backend without such a queue): part
        of a request's delay for overload control."""
        return 0.0

    def batch_counts(self) -> dict[str, tuple[int, int, int, int]]:
        """Group commit so far, per request kind: statements that carried
        several requests, the requests they carried, those statements
        refused as a whole and run again one request at a time, and
        statements started for requests queued too long (empty for a
        backend without group commit)."""
