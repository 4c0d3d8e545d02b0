"""The shared database's side of "only the owner of a tag sends its NOTIFYs".

A node that sees a change (or a request) for subscriptions under a tag it
does not own leaves it in ``notify_queue`` (or, for an unsubscribe,
``ended_subscriptions``) in the same statement as the change, and the
database wakes the owner with ``pg_notify`` when that statement commits
(migration 6): no extra round trip for the node that saw it.  Each node
keeps one connection of its own LISTENing, outside the pool, and takes what
waits for it when woken.

The LISTEN connection also holds a session lock of the node's id while it
lives: the database queues only for a node that listens.  For a tag whose
owner does not (dead, stopped, its connection cut) or that has no owner,
the lowest-named listening node sends (migration 7; service/owners.py
says why).  The queue, not the wake-up, is the record: a row left for a
sender that died since is taken by the tag's next sender.  The connection
is re-opened with back-off; on every (re)connection the node takes its
queue, and it also takes at every expiry interval (``Owners.poll``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import psycopg

from .postgres import _SUB_COLUMNS, PostgresStorage, _sub
from .records import Subscription
from .schema import LISTENER_LOCK, NOTIFY_CHANNEL, TAGS_CHANNEL

log = logging.getLogger(__name__)

_TAKE = f"SELECT {_SUB_COLUMNS}, reason FROM presence_take_notifies(%s, %s)"
_END = f"SELECT {_SUB_COLUMNS}, reason FROM presence_end_subscription(%s, %s, %s)"
_PASS_ON = "SELECT presence_pass_on(%s, %s)"

#: Re-opening the LISTEN connection: first wait, doubling up to the last.
BACKOFF = (0.05, 2.0)


class ChangeFeed:
    """The notify queue of one node and the LISTEN connection that wakes it.

    ``on_wake(tags)`` is called (from the event loop, never blocking) when
    something waits for this node, with ``tags`` True when a tag changed
    owner (or the connection was (re)opened: anything may have)."""

    def __init__(self, storage: PostgresStorage, node: str, on_wake: Callable[[bool], None]) -> None:
        self.storage = storage
        self.node = node
        self.on_wake = on_wake
        #: Whether the LISTEN connection is open (wake-ups arrive).
        self.up = False
        self._task: asyncio.Task[None] | None = None
        self._tried = asyncio.Event()

    async def start(self) -> None:
        """Listen from now on; returns once listening, or once the first
        attempt failed or took the connect timeout (the node polls until
        it listens).  From now on the storage counts this node's CSeqs
        only under the tags it sends for."""
        self.storage.sender = self.node
        self._task = asyncio.ensure_future(self._listen())
        try:
            await asyncio.wait_for(self._tried.wait(), self.storage.open_timeout)
        except TimeoutError:
            log.warning("not listening for NOTIFYs yet; polling the notify queue")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _listen(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.storage.dsn, autocommit=True, connect_timeout=max(1, int(self.storage.open_timeout))
                )
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    await conn.execute(f"LISTEN {TAGS_CHANNEL}")
                    # Held while this connection lives: other nodes queue
                    # this node's NOTIFYs only while it listens.  Waits for a
                    # previous process of this node to go.
                    await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LISTENER_LOCK, self.node))
                    self.up = True
                    self._tried.set()
                    delay = BACKOFF[0]
                    self.on_wake(True)  # whatever was queued while not listening
                    async for n in conn.notifies():
                        if n.channel == TAGS_CHANNEL:
                            self.on_wake(True)
                        elif n.payload == self.node:
                            self.on_wake(False)
            except Exception as e:  # whatever broke it, listen again
                if self.up:
                    log.warning("LISTEN connection lost; polling the notify queue", extra={"error": str(e)})
            finally:
                self.up = False
                self._tried.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def take(self, now: float) -> tuple[list[Subscription], list[tuple[Subscription, str]]]:
        """What waits for this node under the tags it sends for now: the
        subscriptions to send the current state to, and the ended ones with
        the reason of their terminated NOTIFY."""
        rows = await self.storage._rows(_TAKE, (self.node, now))
        live: list[Subscription] = []
        ended: list[tuple[Subscription, str]] = []
        for r in rows:
            if r[-1] is None:
                live.append(_sub(r[:-1]))
            else:
                ended.append((_sub(r[:-1]), r[-1]))
        return live, ended

    async def pass_on(self, sub_ids: list[str]) -> set[str]:
        """Queue a NOTIFY of the current state of each subscription for the
        sender of its tag; returns the ids this node sends itself (it is
        that sender, or no node listens)."""
        return {r[0] for r in await self.storage._rows(_PASS_ON, (sub_ids, self.node))}

    async def end(self, sub_id: str, reason: str) -> tuple[Subscription | None, bool]:
        """Remove a subscription (None if it does not exist) and say
        whether the sender of its tag, another node, sends the terminated
        NOTIFY (``reason``) or this node must."""
        rows: list[tuple[Any, ...]] = await self.storage._rows(_END, (sub_id, reason, self.node))
        if not rows:
            return None, False
        return _sub(rows[0][:-1]), rows[0][-1] is not None
