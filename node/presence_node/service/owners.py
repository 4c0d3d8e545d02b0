"""Only the owner of a subscription's sharing tag sends its NOTIFYs (shared database).

Two nodes notifying one dialog each take a CSeq from the database and send;
the later CSeq can overtake the earlier on the way, and the watcher answers
it with 500 (S09; some phones then drop the dialog), and rate control (D7:
one NOTIFY in flight per subscription) held per node only.  With one sender
per dialog, its NOTIFYs leave one node, one at a time, in CSeq order.

Which node owns which tag is the database's ``sharing_tags`` row, and the
requests and changes another node handles reach the owner through the
database (storage/changes.py):

* a change's watchers are read routed (``Storage.watchers`` with
  ``sender``): the node gets those it sends to, the others are queued for
  their owners in the same statement, so the common case (the node handling
  the traffic owns every watcher) reads them once and queues nothing;
* a SUBSCRIBE under a tag this node does not own is stored with no NOTIFY
  counted (CSeq 0), which queues its first NOTIFY for the owner;
* a refresh's NOTIFY is passed on; an unsubscribe moves the subscription to
  the owner's ended list, and the owner sends the terminated NOTIFY after
  any of its own in flight.

This node keeps the names of the tags it owns for those decisions, re-read
whenever a tag changes owner (the database wakes every node) and after each
of its own activations; whatever a node takes from the queue is fenced by
the database (only rows of tags it sends for at that moment).

The sender of a tag is its owner only while the owner listens.  For a tag
whose owner is dead, stopped or cut off, or that has none, the database
names one agreed stand-in, the lowest-named listening node (migration 7),
before any failover: one sender per dialog at every moment.  Two
alternatives were rejected.  Letting the node that sees a change send (as
before) makes two senders as soon as two nodes see changes (two publishers
through two nodes while the owner is dead: hundreds of CSeq inversions in
the kill test).  Holding the changes for the tag's next owner leaves its
watchers silent until a failover, or until their Expires if nobody moves
the tag (S80; a stopped HA active keeps its tag).  Only when no node
listens at all does the node that sees a change send.

The sender changes hands when the owner stops or starts listening, or the
stand-in does, or the tag moves; what is queued is taken by whoever sends
for the tag next (every node also takes at each expiry interval, as a
change queued for a sender that died meanwhile wakes nobody).  CSeqs come
from the database, so the next sender carries on above the last one
counted, and only the current sender gets one counted (migration 7): a
node that read a change's watchers just before the sender changed is
refused the count and passes the NOTIFY on (``Notifier.notify``).  A node
starting to listen waits, on its listener lock, for every statement that
decided or counted without it, so the previous sender's last CSeqs are
counted before the new one's first.  What remains of a handover between
two live nodes: a NOTIFY the previous sender counted just before it can
still be on its way (sent, or awaiting its answer, D7) when the new
sender's first leaves; a dead previous sender sends nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from ..metrics import Counting
from ..storage import Storage, Subscription
from .notify import Notifier

log = logging.getLogger(__name__)


class NotifyQueue(Protocol):
    """The shared database's queue of NOTIFYs for this node (ChangeFeed)."""

    up: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def take(self, now: float) -> tuple[list[Subscription], list[tuple[Subscription, str]]]: ...

    async def pass_on(self, sub_ids: list[str]) -> set[str]: ...

    async def end(self, sub_id: str, reason: str) -> tuple[Subscription | None, bool]: ...


class Owners:
    def __init__(
        self, node: str, storage: Storage, notifier: Notifier, metrics: Counting, clock: Callable[[], float] = time.time
    ) -> None:
        self.node = node
        self.storage = storage
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.queue: NotifyQueue | None = None
        #: Tags this node owned when last read.
        self.owned: frozenset[str] = frozenset()
        self._wanted = False
        self._tags_wanted = False
        #: The last take failed (the database was away): the next poll retries.
        self._failed = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def sends(self, tag: str) -> bool:
        """Whether this node sends the NOTIFYs of subscriptions under ``tag``
        without asking the database: it owns the tag and listens (while it
        does not, the database has another node send them)."""
        return tag in self.owned and self.listening

    async def start(self, queue: NotifyQueue) -> None:
        self.queue = queue
        await self._read_tags()
        await queue.start()

    async def close(self, timeout: float) -> None:
        """Stop listening, so that the stand-in sends this node's NOTIFYs
        from now on (as for a dead owner) and takes what was queued for it;
        then one last take, which gets that only when no other node listens
        (bounded by ``timeout``)."""
        if self.queue is not None:
            await self.queue.close()
            self.wake()
        self._closed = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass

    @property
    def listening(self) -> bool:
        return self.queue is not None and self.queue.up

    def wake(self, tags: bool = False) -> None:
        """Something waits for this node (``tags``: a tag changed owner).
        Wake-ups that arrive while the queue is being taken are served by
        one more take, so under load one statement takes many."""
        self._wanted = True
        self._tags_wanted |= tags
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._run())

    def poll(self) -> None:
        """Called every expiry interval: take anyway.  A wake-up may never
        come: the LISTEN connection is down, the last take failed, or a
        change was queued for a sender that died before taking it (the
        next sender of its tag, maybe this node, takes it)."""
        self.wake(not self.listening or self._failed)

    async def _run(self) -> None:
        while self._wanted:
            self._wanted = False
            try:
                if self._tags_wanted:
                    self._tags_wanted = False
                    await self._read_tags()
                await self._take()
                self._failed = False
            except Exception:
                self._failed = True
                log.exception("taking the notify queue failed")

    async def _read_tags(self) -> None:
        self.owned = frozenset(t.name for t in await self.storage.tags() if t.owner == self.node)

    async def _take(self) -> None:
        assert self.queue is not None
        live, ended = await self.queue.take(self.clock())
        # A subscription may come twice (a change and a refresh): one NOTIFY.
        groups: dict[tuple[str, str], dict[str, Subscription]] = {}
        for s in live:
            groups.setdefault((s.presentity, s.event), {})[s.id] = s
        if groups:
            self.metrics.count("presence_notify_queue_taken", "notify", sum(map(len, groups.values())))
        if ended:
            self.metrics.count("presence_notify_queue_taken", "terminated", len(ended))
        # Concurrently: their CSeq statements share a batch.
        await asyncio.gather(
            *(self.notifier.notify(list(g.values())) for g in groups.values()),
            *(self.notifier.terminated(s, reason) for s, reason in ended),
        )

    async def pass_on(self, subs: list[Subscription]) -> None:
        """Have the senders of their tags send these subscriptions their
        current state; this node sends those it is the sender of."""
        assert self.queue is not None
        here = await self.queue.pass_on([s.id for s in subs])
        if here:
            await self.notifier.notify([s for s in subs if s.id in here])

    async def end(self, sub_id: str, reason: str) -> tuple[Subscription | None, bool]:
        """Remove a subscription (None: there was none); True when the
        sender of its tag, another node, sends the terminated NOTIFY, False
        when this node must."""
        assert self.queue is not None
        return await self.queue.end(sub_id, reason)
