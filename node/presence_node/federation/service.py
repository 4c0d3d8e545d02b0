"""Federation: presentities shared by broadcast and query between locations
that have no database in common (the seed's third and fourth scenarios).

A *location* is one storage: a node on its own (memory), or the nodes
sharing one PostgreSQL database.  Messages go only to nodes of *other*
locations, since nodes of one location already see the same data.

On-demand sharing (the seed, minus the reference's faults):

- every node announces its *interest*: the (presentity, package) pairs its
  storage has watchers for.  An accepted PUBLISH (new, refresh, modify,
  remove, and expiry) is sent to the nodes of the locations interested in
  it, plus the location whose node issued the etag it replaces, so the
  cost per PUBLISH follows the locations that have watchers, not the size
  of the cluster.  A PUBLISH answered with an error is never sent.
- a new watcher of a presentity this location holds nothing of sends one
  query; only locations holding it by SIP answer, with *every* live
  publication.  The first NOTIFY waits up to ``query_wait`` for an answer.
  A query unanswered after ``query_ttl`` may be sent again.  When the last
  local watcher leaves, the interest is withdrawn and the copies dropped.
  A subscription to a resource list watches its members instead: they are
  announced, queried and kept while any of the list's subscriptions lasts.

Full sharing keeps every presentity everywhere; a node that connects to a
peer pulls what that peer holds by SIP, so a restarted node serves
presentities it never received itself.

Only the node where this location's tag is active acts on broadcasts and
resyncs (OpenSIPS #2960), so each watcher gets each NOTIFY once; a node
applies the answers to its own queries.  Lost messages are found by
sequence number (:mod:`.wire`) and repaired by a resync: the peer sends its
full interest, tags and held publications for what we watch.  The same
happens on every (re)connection and every ``resync_interval``, so the
cluster converges without waiting for the next PUBLISH.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..config import Config
from ..metrics import Counting
from ..service.notify import Notifier
from ..storage import Publication, Storage, Subscription
from ..storage.base import outside_request
from ..tasks import Tasks
from .channel import Channel
from .wire import (
    Envelope, Interest, Key, Message, Pub, Publications, Publish, Query, Rejected, State, SyncRequest, Tag, decode,
)

log = logging.getLogger(__name__)

#: Keys per ``sync`` message: a full sync of 100k presentities is many
#: messages of ~100 KiB, not one too large for the channel.
SYNC_BATCH = 256


@dataclass(slots=True)
class _Query:
    sent: float
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class Federation:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        notifier: Notifier,
        metrics: Counting,
        secret: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        fed = config.federation
        self.config = config
        self.storage = storage
        self.notifier = notifier
        self.metrics = metrics
        self.clock = clock
        self.full = fed.mode == "full-sharing"
        self.node = config.node_id
        self.location = config.location
        self.peer_location = {p.id: p.location or p.id for p in fed.peers}
        #: Peers in other locations: the only ones we exchange state with.
        self.others = [p for p, loc in self.peer_location.items() if loc != self.location]
        self.events = frozenset(e for e in config.cluster_pres_events if e in config.packages and e != "presence.winfo")
        self.interest: dict[str, set[Key]] = {p: set() for p in self.others}
        self.announced: set[Key] = set()
        self.pending: dict[Key, _Query] = {}
        self.remote_tags: dict[str, tuple[Tag, ...]] = {}
        self.channel = Channel(config, secret, self._on_message, self._on_connected, metrics, clock)
        self._tasks = Tasks("federation")
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.channel.start()
        self._timer = asyncio.ensure_future(self._periodic())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self._tasks.cancel()
        await self.channel.close()

    # -- called by the SIP side ----------------------------------------------

    def published(self, presentity: str, event: str, old_etag: str | None, pub: Publication | None) -> None:
        """An accepted PUBLISH (or an expiry) changed what this location
        holds: tell the locations that need it."""
        if event not in self.events:
            return
        key = (presentity, event)
        self._send(self._targets(key, old_etag), Publish(key, old_etag, _pub(pub) if pub is not None else None))

    def _targets(self, key: Key, old_etag: str | None) -> list[str]:
        if self.full:
            return self.others
        locations = {self.peer_location[p] for p, keys in self.interest.items() if key in keys}
        if old_etag:
            # The location that issued the etag holds the record we replaced.
            issuer = self.peer_location.get(old_etag.split(".", 1)[0])
            if issuer is not None:
                locations.add(issuer)
        return [p for p in self.others if self.peer_location[p] in locations]

    async def subscribed(self, sub: Subscription, pubs: list[Publication]) -> bool:
        """A new watcher, stored with the state ``pubs`` this location holds
        for it: announce the interest (a list's members, :meth:`_interest_of`),
        and query the cluster for what this location holds nothing of,
        waiting up to ``query_wait`` so the first NOTIFY carries the remote
        state.  True if it waited (the state must be read anew)."""
        own = (sub.presentity, sub.event)
        if sub.event not in self.events:
            return False
        keys = self._interest_of(*own)
        if self.full:
            unknown: list[Key] = []
        elif keys == (own,):
            unknown = [] if pubs else [own]
        else:
            # A member not watched here yet: no copy of it is kept current here.
            unknown = [k for k in keys if k not in self.announced]
        now = self.clock()
        queries: list[_Query] = []
        ask: list[Key] = []
        for key in unknown:
            query = self.pending.get(key)
            if query is None or (not query.answered.is_set() and now - query.sent > self.config.federation.query_ttl):
                query = self.pending[key] = _Query(now)
                self.metrics.count("federation_queries", sub.event)
                ask.append(key)
            queries.append(query)
        new = tuple(k for k in keys if k not in self.announced)
        if new:
            # One message: the new interest, carrying the query when there is one.
            self.announced.update(new)
            self._broadcast(Interest(add=new, remove=(), query=bool(ask)))
        again = tuple(k for k in ask if k not in new)
        if again:
            self._broadcast(Query(again))
        waiting = [q.answered for q in queries if not q.answered.is_set()]
        if not waiting or self.config.federation.query_wait <= 0:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in waiting)), self.config.federation.query_wait)
        return True

    async def unwatched(self, keys: Iterable[Key]) -> None:
        """Watchers left: for each key no longer watched here (directly or
        through a list), withdraw the interest and (on demand) drop the
        copies nobody will keep current."""
        now = self.clock()
        for presentity, event in dict.fromkeys(k for key in keys for k in self._interest_of(*key)):
            if event not in self.events or await self._watched_here(presentity, event, now):
                continue
            key = (presentity, event)
            if key in self.announced:
                self.announced.discard(key)
                self._broadcast(Interest(add=(), remove=(key,)))
            if not self.full:
                self.pending.pop(key, None)
                await self.storage.forget_replicas(presentity, event)

    async def list_redefined(self, aor: str, before: Iterable[str]) -> None:
        """List ``aor`` was set or deleted here (its members were
        ``before``): where it has subscribers, its new members (or, deleted,
        the URI itself) become interest, queried as at SUBSCRIBE time (an
        answer notifies the list's subscribers), and the lost ones stop
        being."""
        now = self.clock()
        for event in sorted(self.events):
            if not await self.storage.watchers(aor, event, now):
                continue
            new = tuple(k for k in self._interest_of(aor, event) if k not in self.announced)
            if new:
                self.announced.update(new)
                if not self.full:
                    for key in new:
                        self.pending[key] = _Query(now)
                    self.metrics.count("federation_queries", event, len(new))
                self._broadcast(Interest(add=new, remove=(), query=not self.full))
            await self.unwatched((m, event) for m in before)

    def _interest_of(self, presentity: str, event: str) -> tuple[Key, ...]:
        """What a subscription to ``(presentity, event)`` makes this location
        watch: a resource list's members, whose state the node composes for
        the list's subscribers (RFC 4662), else the presentity itself."""
        lists = self.notifier.lists
        members = lists.get(presentity) if lists is not None else None
        if members is None:
            return ((presentity, event),)
        return tuple((m, event) for m in members)

    async def _watched_here(self, presentity: str, event: str, now: float) -> bool:
        """Whether a subscription here watches ``presentity``: itself, or a
        list holding it."""
        return bool(await self.storage.watchers(presentity, event, now)) or await self._listed(presentity, event, now)

    async def _listed(self, presentity: str, event: str, now: float) -> bool:
        """Whether a list holding ``presentity`` has subscribers here."""
        lists = self.notifier.lists
        for aor in lists.containing(presentity) if lists is not None else ():
            if await self.storage.watchers(aor, event, now):
                return True
        return False

    def expired(self, pubs: Iterable[Publication]) -> None:
        for p in pubs:
            if not p.origin:
                self.published(p.presentity, p.event, p.etag, None)

    def tags_changed(self) -> None:
        self._spawn(self._send_state(self.others))

    # -- periodic and connection-driven resync --------------------------------

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.federation.resync_interval)
            try:
                await self._exchange([p for p in self.others if self.channel.up(p)], "periodic")
            except Exception:
                log.exception("federation resync failed")

    def _on_connected(self, peer: str) -> None:
        if peer in self.interest:
            self._spawn(self._exchange([peer], "connect"))

    async def _exchange(self, peers: list[str], cause: str) -> None:
        """Send ``peers`` our state and ask each for a resync, reading what
        we watch once for all of them."""
        watched = await self._watched()
        await self._send_state(peers, watched)
        for peer in peers:
            await self._resync(peer, cause, watched)

    async def _watched(self) -> tuple[Key, ...]:
        watched = await self.storage.watched_keys(self.events, self.clock())
        return tuple(sorted({k for key in watched for k in self._interest_of(*key)}))

    async def _send_state(self, peers: list[str], watched: tuple[Key, ...] | None = None) -> None:
        """Our interest (``watched``, read now when None) and tags."""
        if not peers:
            return
        if watched is None:
            watched = await self._watched()
        tags = tuple(Tag(t.name, t.owner, t.epoch, t.since) for t in await self.storage.tags())
        self._send(peers, State(self.location, watched, tags))

    async def _resync(self, peer: str, cause: str, watched: tuple[Key, ...] | None = None) -> None:
        """Ask ``peer`` for what its location holds of what we watch
        (``watched``, read now when None; everything in full sharing)."""
        if not await self._acting():
            return
        self.metrics.count("federation_resyncs", cause)
        keys = None if self.full else (watched if watched is not None else await self._watched())
        self._send([peer], SyncRequest(keys))

    async def _acting(self, event: str | None = None) -> bool:
        """Whether this node is where its location's tag for ``event`` is
        active (by default: the clustered tag)."""
        tag = self.config.tag_for(event) if event is not None else self.config.clustered_tag
        return any(t.name == tag and t.owner == self.node for t in await self.storage.tags())

    # -- incoming -----------------------------------------------------------------

    async def _on_message(self, env: Envelope, skipped: int) -> None:
        try:
            msg = decode(env.kind, env.body, events=self.events, max_body=self.config.limits.max_body_size)
            if msg is not None:
                await self._handle(env.sender, msg)
        except Rejected as e:
            self.metrics.count("cluster_messages_ignored", e.reason)
            log.warning("cluster message ignored", extra={"kind": env.kind, "reason": str(e)})
        finally:
            # Whatever this message was, the ones before it were lost.
            if skipped and env.sender in self.interest:
                await self._resync(env.sender, "gap")

    async def _handle(self, sender: str, msg: Message) -> None:
        match msg:
            case State():
                self._state(sender, msg)
            case Interest():
                await self._interest(sender, msg)
            case Publish():
                await self._publish(sender, msg)
            case Query():
                await self._answer(sender, msg.keys)
            case SyncRequest():
                await self._sync_request(sender, msg)
            case Publications():
                await self._publications(sender, msg)

    def _state(self, sender: str, msg: State) -> None:
        if sender in self.interest:
            self.interest[sender] = set(msg.interest)
        self.remote_tags[sender] = msg.tags

    async def _interest(self, sender: str, msg: Interest) -> None:
        keys = self.interest.get(sender)
        if keys is not None:
            keys.difference_update(msg.remove)
            keys.update(msg.add)
        if msg.query and msg.add:
            await self._answer(sender, msg.add)

    async def _publish(self, sender: str, msg: Publish) -> None:
        key = msg.key
        if not await self._acting(key[1]):
            self.metrics.count("cluster_messages_ignored", "backup")
            return
        presentity, event = key
        pub = self._record(msg.pub, sender) if msg.pub is not None else None
        now = self.clock()
        watchers = await self.storage.watchers(presentity, event, now)
        if self.full or watchers or await self._listed(presentity, event, now):
            query = self.pending.pop(key, None)
            if query is not None:
                query.answered.set()
            if await self.storage.apply_remote(presentity, event, msg.old, pub):
                await self.notifier.notify(watchers)
                await self.notifier.lists_changed(presentity, event)
            return
        # Nobody here watches it: keep nothing, but drop what it replaces.
        self.metrics.count("cluster_messages_ignored", "no-watchers")
        await self.storage.apply_remote(presentity, event, msg.old, None)
        await self.storage.forget_replicas(presentity, event)

    async def _answer(self, peer: str, keys: Iterable[Key]) -> None:
        """A query: only the acting node of a location holding ``keys`` by
        SIP answers, with every live publication of them."""
        if not await self._acting():
            self.metrics.count("cluster_messages_ignored", "backup")
            return
        held = await self.storage.held_publications(list(keys), self.clock())
        if held:  # only holders answer
            answered = tuple(sorted({(p.presentity, p.event) for p in held}))
            self._send([peer], Publications("answer", answered, tuple(_pub(p) for p in held)))

    async def _sync_request(self, sender: str, msg: SyncRequest) -> None:
        """Send what this location holds of ``keys`` (all: None) in batches
        of :data:`SYNC_BATCH` keys, each saying "exactly these for these
        keys"; a full sync ends with the list of every key held, so the
        peer drops its copies of the others."""
        keys = None if msg.keys is None else list(msg.keys)
        held = await self.storage.held_publications(keys, self.clock())
        await self._send_state([sender])
        by_key: dict[Key, list[Publication]] = {k: [] for k in keys or ()}
        for p in held:
            by_key.setdefault((p.presentity, p.event), []).append(p)
        batch = sorted(by_key)
        for i in range(0, len(batch), SYNC_BATCH):
            part = tuple(batch[i : i + SYNC_BATCH])
            self._send([sender], Publications("sync", part, tuple(_pub(p) for k in part for p in by_key[k])))
        if keys is None:
            self._send([sender], Publications("sync", (), (), complete=tuple(batch)))

    async def _publications(self, sender: str, msg: Publications) -> None:
        """An ``answer`` to our query or a ``sync`` we asked for: the
        sender's location holds exactly ``pubs`` for ``keys``; a full sync's
        last message names every key it holds (``complete``)."""
        keys = list(msg.keys)
        if msg.kind == "answer":
            # Our own question: applied by whoever asked, if still waiting.
            asked = [k for k in keys if k in self.pending and not self.pending[k].answered.is_set()]
            if not asked:
                self.metrics.count("cluster_messages_ignored", "unasked")
                return
            keys = asked
        elif not await self._acting():
            self.metrics.count("cluster_messages_ignored", "backup")
            return
        origin = self.peer_location[sender]
        if msg.complete is not None:
            keys = sorted(await self.storage.replica_keys(origin) - set(msg.complete))
        wanted = set(keys)
        pubs = [self._record(p, sender) for p in msg.pubs if (p.presentity, p.event) in wanted]
        changed = await self.storage.replace_replicas(origin, keys, pubs, self.clock())
        for key in keys:
            query = self.pending.get(key)
            if query is not None:
                query.answered.set()
        for presentity, event in sorted(changed):
            await self.notifier.state_changed(presentity, event)

    # -- helpers ---------------------------------------------------------------------

    def _send(self, peers: Iterable[str], msg: Message) -> None:
        body = msg.body()  # encoded once for all: a publication's body is base64 in it
        for peer in peers:
            self.channel.send(peer, msg.kind, body)

    def _broadcast(self, msg: Message) -> None:
        self._send(self.others, msg)

    def _record(self, pub: Pub, sender: str) -> Publication:
        """A received publication as this location stores it: under its
        package's sharing tag, replicated from the sender's location."""
        return Publication(
            pub.presentity, pub.event, pub.etag, pub.body, pub.content_type, pub.expires_at, pub.received_at,
            self.config.tag_for(pub.event), self.peer_location[sender],
        )

    def _spawn(self, coro: Any) -> None:
        # Outlives the request that may have started it: not bound by its deadline.
        self._tasks.spawn(coro, context=outside_request())

    @property
    def peers_up(self) -> int:
        return sum(self.channel.up(p) for p in self.peer_location)

    # -- admin view --------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        return {
            "mode": self.config.federation.mode,
            "location": self.location,
            "peers": [
                {
                    "node": p,
                    "location": loc,
                    "up": self.channel.up(p),
                    "connected": self.channel.connected(p),
                    "interest": len(self.interest.get(p, ())),
                }
                for p, loc in sorted(self.peer_location.items())
            ],
            "tags": self._cluster_tags(),
        }

    def _cluster_tags(self) -> list[dict[str, Any]]:
        """Every tag peers reported; when two nodes of a location report one
        tag differently (one of them is stale, or dead), the higher epoch
        wins, as it does in their database."""
        best: dict[str, dict[str, Any]] = {}
        for peer, tags in sorted(self.remote_tags.items()):
            for t in tags:
                if t.name not in best or t.epoch > best[t.name]["epoch"]:
                    best[t.name] = dict(t.encode(), node=peer)
        return [best[n] for n in sorted(best)]



def _pub(p: Publication) -> Pub:
    return Pub(p.presentity, p.event, p.etag, p.body, p.content_type, p.expires_at, p.received_at)
