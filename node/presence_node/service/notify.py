"""Sending NOTIFYs: composition, rate control (D7) and failure handling (S26).

The notifier composes one document per (presentity, package, filter) and
renders it per subscription (only the version differs), takes CSeq and
version from one atomic storage call per batch, and hands the bytes to a
:class:`Sender`.  At most one NOTIFY per subscription is in flight: a change
that arrives meanwhile marks the subscription dirty, and the latest state is
sent when the NOTIFY in flight completes, so the last state always arrives
(S56) without a queue per subscription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Iterable, Protocol

from ..packages.base import Document, WatcherView
from ..packages.registry import PackageRegistry
from ..packages.rlmi import ListDocument, Resource
from ..sip.headers import parse_params
from ..sip.message import serialise
from ..sip.status import NOTIFY_FATAL
from ..storage import Publication, Storage, Subscription
from ..storage.base import outside_request
from ..tasks import Tasks
from .ids import Ids
from .lists import ResourceLists

log = logging.getLogger(__name__)

WINFO = "presence.winfo"


class Unwatching(Protocol):
    """Told when subscriptions go (the federation withdraws its interest
    in a presentity nobody here watches any more)."""

    async def unwatched(self, keys: Iterable[tuple[str, str]]) -> None: ...


class Ownership(Protocol):
    """Who sends whose NOTIFYs on a shared database (service/owners.py)."""

    node: str

    def sends(self, tag: str) -> bool: ...

    async def pass_on(self, subs: list[Subscription]) -> None: ...


class Sender(Protocol):
    """The network side, as the notifier sees it."""

    def local_contact(self, sub: Subscription) -> tuple[str, str]:
        """(Via sent-by with transport, Contact URI) for a NOTIFY to ``sub``."""
        ...

    def reachable(self, sub: Subscription) -> bool:
        """Whether a NOTIFY to ``sub`` can be sent at all (#12.3: not to an
        IPv6 Contact from an IPv4-only node)."""
        ...

    def send_request(self, data: bytes, sub: Subscription, branch: str, on_done: Callable[[int], None]) -> None:
        """Send in a client transaction; ``on_done(code)`` gets the final
        status, 408 on Timer F (also for a NOTIFY that waited behind one to
        the same unproven address which timed out, or whose TCP peer
        stopped reading), 503 if it could not be sent at all."""
        ...


class NotifyMetrics(Protocol):
    def notify_sent(self, event: str) -> None: ...

    def notify_failed(self, event: str, code: int) -> None: ...


@dataclass(slots=True)
class _Terminal:
    sub: Subscription
    reason: str
    doc: Document | None


#: CSeq and document version of a subscription's first NOTIFY (S09, S61, S67).
FIRST_CSEQ = 1
FIRST_VERSION = 0

# Markers kept in Notifier._busy for a subscription with a NOTIFY in flight.
_CLEAN = 0
_DIRTY = 1
#: Answered with an S26 code and being removed: sends nothing more, even for
#: a change whose watcher list was read before the removal is stored.
_DYING = 2


class Notifier:
    def __init__(
        self,
        storage: Storage,
        packages: PackageRegistry,
        sender: Sender,
        ids: Ids,
        metrics: NotifyMetrics,
        *,
        min_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.packages = packages
        self.sender = sender
        self.ids = ids
        self.metrics = metrics
        self.min_interval = min_interval
        self.clock = clock
        #: Told of subscriptions dropped after a failed NOTIFY (S26).
        self.listener: Unwatching | None = None
        #: Shared database: this node sends only to subscriptions under the
        #: tags it owns (None: to every one, the node holds them all).
        self.owners: Ownership | None = None
        #: Resource lists (RFC 4662): subscriptions to a list URI get RLMI documents.
        self.lists: ResourceLists | None = None
        #: Members of a list subscription changed since its last NOTIFY: the
        #: next one is partial with those only (none known: full state).
        self._list_changes: dict[str, set[str]] = {}
        self._busy: dict[str, int | _Terminal] = {}
        self._last_sent: dict[str, float] = {}
        self._tasks = Tasks("notify")

    # -- documents ---------------------------------------------------------

    async def document(self, sub: Subscription, now: float, *, full: bool = False) -> Document:
        """The current document for one subscription (full state, except
        for a list subscription with known changes and not ``full``)."""
        members = self._members(sub)
        if members is not None:
            return await self._list_document(sub, members, now, full)
        if sub.event == WINFO:
            watchers = await self.storage.watchers(sub.presentity, "presence", now)
            return self.winfo_document(sub.presentity, (_view(w) for w in watchers), full=True)
        return self.compose(sub, await self.storage.publications(sub.presentity, sub.event, now))

    def compose(self, sub: Subscription, pubs: list[Publication]) -> Document:
        """The document of a (non-winfo) subscription from its presentity's
        live publications, oldest first."""
        package = self.packages.get(sub.event)
        assert package is not None, sub.event
        params = parse_params(sub.event_params) if sub.event_params else None
        return package.compose(f"sip:{sub.presentity}", [p.body for p in pubs], params)

    def _members(self, sub: Subscription) -> tuple[str, ...] | None:
        """The members when ``sub`` watches a resource list, else None."""
        if self.lists is None or sub.event == WINFO:
            return None
        return self.lists.get(sub.presentity)

    async def _list_document(self, sub: Subscription, members: tuple[str, ...], now: float, full: bool) -> Document:
        """RFC 4662: every member's own document under one RLMI; after
        known changes only theirs (partial state), else all (full)."""
        changed = self._list_changes.pop(sub.id, None)
        if full or changed is None:
            chosen, full = members, True
        else:
            chosen = tuple(m for m in members if m in changed)
        package = self.packages.get(sub.event)
        assert package is not None, sub.event
        params = parse_params(sub.event_params) if sub.event_params else None
        resources = []
        for member in chosen:
            pubs = await self.storage.publications(member, sub.event, now)
            doc = package.compose(f"sip:{member}", [p.body for p in pubs], params)
            resources.append(Resource(f"sip:{member}", doc))
        return ListDocument(f"sip:{sub.presentity}", sub.id, resources, full=full)

    async def lists_changed(self, presentity: str, event: str) -> None:
        """A member's state changed: notify the subscribers of every list
        holding it, with that member marked for their partial NOTIFY."""
        if self.lists is None:
            return
        for aor in self.lists.containing(presentity):
            subs = await self.storage.watchers(aor, event, self.clock(), self.sender_id)
            for s in subs:
                self._list_changes.setdefault(s.id, set()).add(presentity)
            await self.notify(subs)

    def winfo_document(self, presentity: str, watchers: Iterable[WatcherView], *, full: bool) -> Document:
        winfo = self.packages.get(WINFO)
        assert winfo is not None
        return winfo.document(f"sip:{presentity}", "presence", list(watchers), full)  # type: ignore[attr-defined]

    # -- entry points --------------------------------------------------------

    async def notify(self, subs: list[Subscription], doc: Document | None = None) -> None:
        """Send the current state to ``subs`` (all of one presentity and
        package), or ``doc`` when given (a winfo partial document)."""
        if not subs:
            return
        ready: list[Subscription] = []
        busy = self._busy
        for s in subs:
            if s.id in busy:
                if busy[s.id] == _CLEAN:
                    busy[s.id] = _DIRTY  # the latest full state goes next
            elif self.min_interval and self._too_soon(s):
                busy[s.id] = _DIRTY
                self._later(s)
            else:
                busy[s.id] = _CLEAN
                ready.append(s)
        if not ready:
            return
        now = self.clock()
        ids = [s.id for s in ready]
        docs: dict[tuple[str, str, str], Document] = {}
        first = ready[0]
        if (
            doc is None
            and first.event != WINFO
            and self._members(first) is None
            and all(s.presentity == first.presentity and s.event == first.event for s in ready)
        ):
            # One storage step for the numbers and the state they carry.
            numbers, pubs = await self.storage.next_notify_state(ids, first.presentity, first.event, now)
            for s in ready:
                k = (s.presentity, s.event, s.event_params)
                if k not in docs:
                    docs[k] = self.compose(s, pubs)
        else:
            numbers = await self.storage.next_notify(ids)
        refused: list[Subscription] = []
        for s in ready:
            n = numbers.get(s.id)
            if n is None:  # gone meanwhile, or (shared database) no longer this node's to send
                busy.pop(s.id, None)
                refused.append(s)
                continue
            d = doc
            if d is not None and n[0] == FIRST_CSEQ:
                # A partial winfo document never opens a dialog (its first
                # NOTIFY was left to this node, the owner: owners.py).
                d = None
            if d is None and self._members(s) is not None:
                d = await self.document(s, now)  # per subscription: its own changes and ids
            if d is None:
                k = (s.presentity, s.event, s.event_params)
                d = docs.get(k)
                if d is None:
                    d = docs[k] = await self.document(s, now)
            self._send(s, n[0], n[1], d, None, now)
        if refused and self.owners is not None:
            # The tag's sender changed since its watchers were read: the new
            # one sends (a subscription gone is passed on as nothing).
            await self.owners.pass_on(refused)

    def hold(self, sub: Subscription) -> None:
        """Keep other NOTIFYs of a new subscription back until :meth:`first`
        sends its first one (a federation query may be answered, and
        notify, while the first NOTIFY waits for it): they would go out with
        a higher CSeq before CSeq 1.  The first document is composed after
        the wait, so it carries what they would have."""
        self._busy.setdefault(sub.id, _CLEAN)

    async def first(self, sub: Subscription, pubs: list[Publication] | None = None) -> None:
        """The first NOTIFY of a new subscription (S18).  The record was
        stored with this NOTIFY's CSeq and version already counted (see
        ``subscribe._initial``), which spares a storage round
        trip on every SUBSCRIBE.  ``pubs``: the state read together with the
        insert (``Storage.insert_subscription_state``); None reads it now."""
        self._busy[sub.id] = _CLEAN
        now = self.clock()
        if pubs is not None and self._members(sub) is None:
            doc = self.compose(sub, pubs)
        else:
            doc = await self.document(sub, now, full=True)
        self._send(sub, FIRST_CSEQ, FIRST_VERSION, doc, None, now)

    async def state_changed(self, presentity: str, event: str) -> None:
        """A publication of (presentity, event) changed: tell every watcher (S57)."""
        now = self.clock()
        await self.notify(await self.storage.watchers(presentity, event, now, self.sender_id))
        await self.lists_changed(presentity, event)

    async def terminated(self, sub: Subscription, reason: str, doc: Document | None = None) -> None:
        """Send the final NOTIFY of a subscription already removed from
        storage (S21, S23, S25).  ``doc`` defaults to the current state."""
        self._list_changes.pop(sub.id, None)
        pending = self._busy.get(sub.id)
        if pending == _DYING:
            return  # S26: the subscriber already said the dialog is gone
        if pending is not None:
            self._busy[sub.id] = _Terminal(sub, reason, doc)
            return
        await self._send_terminal(sub, reason, doc)

    async def _send_terminal(self, sub: Subscription, reason: str, doc: Document | None) -> None:
        now = self.clock()
        if doc is None:
            doc = await self.document(sub, now)
        # The record is gone from storage, so CSeq and version come from the
        # snapshot, which holds the last values the storage handed out.
        sub.cseq += 1
        self._busy[sub.id] = _CLEAN
        self._send(sub, sub.cseq, sub.version, doc, reason, now)
        sub.version += 1

    # -- sending -----------------------------------------------------------

    def _send(self, sub: Subscription, cseq: int, version: int, doc: Document, reason: str | None, now: float) -> None:
        body = doc.render(version)
        via, contact = self.sender.local_contact(sub)
        branch = self.ids.branch()
        if reason is None:
            remaining = max(0, int(sub.expires_at - now))
            state = f"{sub.status};expires={remaining}"
        else:
            state = f"terminated;reason={reason}"
        headers = [
            ("Via", f"{via};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{sub.local_uri};tag={sub.id}"),
            ("To", sub.remote_uri),
            ("Call-ID", sub.call_id),
            ("CSeq", f"{cseq} NOTIFY"),
            ("Contact", f"<{contact}>"),
        ]
        if sub.routes:
            headers.append(("Route", sub.routes))
        headers.append(("Event", sub.event_header))
        if isinstance(doc, ListDocument):
            headers.append(("Require", "eventlist"))  # RFC 4662 §5.1
        headers.append(("Subscription-State", state))
        if body:
            headers.append(("Content-Type", doc.content_type))
        data = serialise(f"NOTIFY {sub.contact} SIP/2.0", headers, body)
        if self.min_interval:
            self._last_sent[sub.id] = now
        final = reason is not None
        self.sender.send_request(data, sub, branch, lambda code: self._done(sub, code, final))
        self.metrics.notify_sent(sub.event)

    def _done(self, sub: Subscription, code: int, final: bool) -> None:
        pending = self._busy.pop(sub.id, None)
        if code >= 300:
            self.metrics.notify_failed(sub.event, code)
        if final:
            self._last_sent.pop(sub.id, None)
            return
        if code in NOTIFY_FATAL or code == 408:
            # S26: the subscriber is gone; remove it and send nothing more.
            # Marked at once: a change notified before the removal is
            # stored finds it busy and sends nothing.
            self._busy[sub.id] = _DYING
            self._spawn(self._drop(sub, code))
            return
        if isinstance(pending, _Terminal):
            self._spawn(self._send_terminal(pending.sub, pending.reason, pending.doc))
        elif pending == _DIRTY:
            self._spawn(self._resend(sub))

    @property
    def sender_id(self) -> str | None:
        """Who reads a change's watchers (Storage.watchers ``sender``)."""
        return self.owners.node if self.owners is not None else None

    async def _resend(self, sub: Subscription) -> None:
        current = await self.storage.subscription(sub.id)
        if current is None:
            return
        if self.owners is not None and not self.owners.sends(current.tag):
            await self.owners.pass_on([current])  # its tag moved meanwhile: the new owner sends it
            return
        await self.notify([current])

    async def list_redefined(self, aor: str) -> None:
        """A list was set or deleted (admin API): its subscribers get their
        full state now (a deleted list's subscribers get the list URI's own
        state, as for any presentity, until they end or expire)."""
        now = self.clock()
        for event in self.packages.all_packages():
            if event.name == WINFO:
                continue
            subs = await self.storage.watchers(aor, event.name, now, self.sender_id)
            for s in subs:
                self.full_state_next(s.id)
            await self.notify(subs)

    def full_state_next(self, sub_id: str) -> None:
        """The next NOTIFY of a list subscription carries every member (a
        refresh asks for full state, RFC 4662 §5.2)."""
        self._list_changes.pop(sub_id, None)

    async def _drop(self, sub: Subscription, code: int) -> None:
        self._list_changes.pop(sub.id, None)
        # Only the owner of the subscription's tag acts on a failed NOTIFY: a
        # 408 or 481 seen by another node (one its NOTIFY could not reach)
        # must not delete the shared subscription.
        try:
            removed = await self.storage.delete_subscription(sub.id, owner=self.ids.node_id)
        finally:
            if self._busy.get(sub.id) == _DYING:
                del self._busy[sub.id]
        if removed is not None:
            log.info("subscription removed after NOTIFY failure", extra={"sub": sub.id, "code": code})
            await self.watcher_changed(removed, "terminated", "noresource" if code != 408 else "timeout")
            if self.listener is not None:
                await self.listener.unwatched([(removed.presentity, removed.event)])

    def flow_closed(self, subs: list[Subscription]) -> None:
        """The TLS or WebSocket connection these watchers' NOTIFYs travel on
        closed: nothing can reach them any more, so each ends now as on a
        NOTIFY timeout (S26), unless a NOTIFY in flight already ends it."""
        for sub in subs:
            if sub.id not in self._busy:
                self._busy[sub.id] = _DYING
                self._spawn(self._drop(sub, 408))

    async def watcher_changed(self, sub: Subscription, status: str, event: str) -> None:
        """A presence watcher appeared or went: partial winfo to the
        presentity's winfo subscribers (S63)."""
        if sub.event != "presence" or self.packages.get(WINFO) is None:
            return
        now = self.clock()
        winfo_subs = await self.storage.watchers(sub.presentity, WINFO, now, self.sender_id)
        if winfo_subs:
            view = WatcherView(sub.id, f"sip:{sub.watcher}", status, event)
            await self.notify(winfo_subs, self.winfo_document(sub.presentity, [view], full=False))

    def _too_soon(self, sub: Subscription) -> bool:
        last = self._last_sent.get(sub.id)
        return last is not None and self.clock() - last < self.min_interval

    def _later(self, sub: Subscription) -> None:
        delay = self.min_interval - (self.clock() - self._last_sent.get(sub.id, 0.0))

        async def fire() -> None:
            await asyncio.sleep(max(0.0, delay))
            pending = self._busy.get(sub.id)
            if pending == _DIRTY:
                del self._busy[sub.id]
                await self._resend(sub)
            elif isinstance(pending, _Terminal):
                # Ended (unsubscribe, expiry) while waiting out the interval:
                # nothing is in flight, so no _done() would send it.
                del self._busy[sub.id]
                await self._send_terminal(pending.sub, pending.reason, pending.doc)

        self._spawn(fire())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Outlives the request that may have started it: not bound by its deadline.
        self._tasks.spawn(coro, context=outside_request())

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for NOTIFYs in flight: graceful shutdown."""
        deadline = time.monotonic() + timeout
        while (self._busy or self._tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def _view(sub: Subscription) -> WatcherView:
    return WatcherView(sub.id, f"sip:{sub.watcher}", sub.status, "subscribe")
