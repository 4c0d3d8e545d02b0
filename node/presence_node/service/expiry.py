"""Timer-driven duties: expiring subscriptions (S25) and publications (S47).

Each sweep asks storage to delete-and-return what expired under the tags
this node owns (None = every tag, a node on its own), so a record is expired
and notified exactly once even when several nodes sweep the same database.
"""

from __future__ import annotations

import logging
from typing import Callable, Collection

from .notify import Notifier
from ..storage import Storage

log = logging.getLogger(__name__)


class Expirer:
    def __init__(
        self,
        storage: Storage,
        notifier: Notifier,
        owned_tags: Callable[[], Collection[str] | None],
        on_expired: Callable[[str, int], None],
        clock: Callable[[], float],
    ) -> None:
        self.storage = storage
        self.notifier = notifier
        self.owned_tags = owned_tags
        self.on_expired = on_expired
        self.clock = clock

    async def sweep(self) -> None:
        now = self.clock()
        tags = self.owned_tags()
        subs = await self.storage.expire_subscriptions(now, tags)
        self.on_expired("subscription", len(subs))
        for sub in subs:
            await self.notifier.terminated(sub, "timeout")
            await self.notifier.watcher_changed(sub, "terminated", "timeout")
        pubs = await self.storage.expire_publications(now, tags)
        self.on_expired("publication", len(pubs))
        for presentity, event in dict.fromkeys((p.presentity, p.event) for p in pubs):
            await self.notifier.state_changed(presentity, event)
