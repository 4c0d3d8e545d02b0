"""Timer-driven duties: expiring subscriptions (S25), publications (S47)
and REGISTER bindings (which nobody is told about, but whose memory must
go: #12.7).

Each sweep asks storage to delete-and-return what expired under the tags
this node owns *in storage* (checked in the same statement), so a record is
expired and notified exactly once even when several nodes sweep the same
database, and a backup node does nothing.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Protocol

from .notify import Notifier, Unwatching
from ..storage import Publication, Storage

log = logging.getLogger(__name__)


class ExpiryListener(Unwatching, Protocol):
    """Told what expired (the federation: withdraw interest, tell peers)."""

    def expired(self, pubs: Iterable[Publication]) -> None: ...


class Expirer:
    def __init__(
        self,
        storage: Storage,
        notifier: Notifier,
        node: str,
        on_expired: Callable[[str, int], None],
        clock: Callable[[], float],
    ) -> None:
        self.storage = storage
        self.notifier = notifier
        self.node = node
        self.on_expired = on_expired
        self.clock = clock
        self.listener: ExpiryListener | None = None

    async def sweep(self) -> None:
        now = self.clock()
        subs = await self.storage.expire_subscriptions(now, self.node)
        self.on_expired("subscription", len(subs))
        for sub in subs:
            await self.notifier.terminated(sub, "timeout")
            await self.notifier.watcher_changed(sub, "terminated", "timeout")
        pubs = await self.storage.expire_publications(now, self.node)
        self.on_expired("publication", len(pubs))
        self.on_expired("registration", len(await self.storage.expire_registrations(now, self.node)))
        if self.listener is not None:
            self.listener.expired(pubs)
            await self.listener.unwatched((s.presentity, s.event) for s in subs)
        for presentity, event in dict.fromkeys((p.presentity, p.event) for p in pubs):
            await self.notifier.state_changed(presentity, event)
