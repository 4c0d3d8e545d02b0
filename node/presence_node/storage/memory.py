"""The in-memory backend: dicts plus expiry wheels, for a node on its own.

Every method runs without awaiting anything, so under asyncio it is atomic
by construction.  Expiry uses wheels of per-second buckets, so a sweep costs
what has expired, not the table size.  Publications and bindings are taken
out of their bucket when refreshed or removed (a dict per second), so a
refresh flood leaves nothing behind.  Subscriptions, the figure memory is
judged on, cost 8 bytes of wheel each (a list per second, lazy deletion: a
refresh adds an entry, stale ones are skipped); once stale entries
outnumber the live subscriptions twice over, the wheel is rebuilt from them
(a pause of about 40 ms per 100k subscriptions on a loaded 2-core machine,
after at least twice that many refreshes), so a refresh flood cannot grow
it without bound.

The live-state limits read :meth:`MemoryStorage.usage`: counters kept up to
date by every insert and removal (per kind and per source IP), exact and
O(1) to read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Collection, Mapping

from .base import PresentityFull, StaleEpoch, UnknownTag
from .records import Publication, Registration, Subscription, TagState, Usage, differing_keys, source_ip

Key = tuple[str, str]  # (presentity, event)
#: Stale wheel entries tolerated beyond twice the live subscriptions.
WHEEL_SLACK = 1024


class MemoryStorage:
    shared = False

    def __init__(self) -> None:
        self._pubs: dict[Key, dict[str, Publication]] = {}
        #: Expiry wheel of publications: whole second -> {etag: key}.
        self._pub_wheel: dict[int, dict[str, Key]] = {}
        self._subs: dict[str, Subscription] = {}
        # Keyed by presentity alone (the package is checked on lookup), and a
        # presentity watched once, the common case, maps straight to its
        # subscription; a dict only once a second watcher comes.  Both save
        # memory per idle subscription, the figure the node is judged on.
        self._by_presentity: dict[str, Subscription | dict[str, Subscription]] = {}
        # Expiry wheel: whole second -> ids due then.  8 bytes per entry
        # instead of a heap tuple; refreshes leave stale ids, skipped later.
        self._sub_wheel: dict[int, list[str]] = {}
        self._wheel_size = 0  # entries in the wheel, stale ones included
        self._bindings: dict[str, dict[str, Registration]] = {}
        #: Expiry wheel of bindings: whole second -> {(aor, contact)}.
        self._reg_wheel: dict[int, dict[tuple[str, str], None]] = {}
        self._tags: dict[str, TagState] = {}
        self._npubs = 0
        self._nbindings = 0
        #: Live records per source IP (only sources holding some).
        self._by_source: dict[str, int] = {}
        #: Watcher rules (#15.3), set through the admin API only.
        self._rules: dict[str, dict[str, bool]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def set_watcher_rule(self, presentity: str, watcher: str, allow: bool | None) -> bool:
        rules = self._rules.setdefault(presentity, {})
        existed = watcher in rules
        if allow is None:
            rules.pop(watcher, None)
        else:
            rules[watcher] = allow
        if not rules:
            del self._rules[presentity]
        return existed

    async def watcher_rule(self, presentity: str, watcher: str) -> bool | None:
        rules = self._rules.get(presentity)
        return rules.get(watcher) if rules else None

    async def watcher_rules(self, presentity: str) -> dict[str, bool]:
        return dict(self._rules.get(presentity, {}))

    # -- publications ------------------------------------------------------

    def _held(self, source: str, n: int) -> None:
        """Count ``n`` more (or fewer) live records against ``source``."""
        if not source:
            return
        left = self._by_source.get(source, 0) + n
        if left > 0:
            self._by_source[source] = left
        else:
            self._by_source.pop(source, None)

    def _store(self, pub: Publication) -> None:
        """Store ``pub`` (replacing one with its etag) and schedule its expiry."""
        pubs = self._pubs.setdefault((pub.presentity, pub.event), {})
        old = pubs.get(pub.etag)
        if old is None:
            self._npubs += 1
        else:
            self._held(old.source, -1)
            self._unschedule_pub(old)
        pubs[pub.etag] = pub
        self._held(pub.source, 1)
        self._schedule_pub(pub)

    def _schedule_pub(self, pub: Publication) -> None:
        self._pub_wheel.setdefault(int(pub.expires_at), {})[pub.etag] = (pub.presentity, pub.event)

    def _unschedule_pub(self, pub: Publication) -> None:
        second = int(pub.expires_at)
        bucket = self._pub_wheel.get(second)
        if bucket is not None:
            bucket.pop(pub.etag, None)
            if not bucket:
                del self._pub_wheel[second]

    async def insert_publication_watched(
        self, pub: Publication, now: float, sender: str | None = None, *, cap: int | None = None
    ) -> list[Subscription]:
        if cap is not None and len(self._pubs.get((pub.presentity, pub.event), ())) >= cap:
            raise PresentityFull(pub.presentity, pub.event)
        self._store(pub)
        return await self.watchers(pub.presentity, pub.event, now)

    def _live_pub(self, presentity: str, event: str, etag: str, now: float) -> Publication | None:
        pubs = self._pubs.get((presentity, event))
        if not pubs:
            return None
        pub = pubs.get(etag)
        if pub is None or pub.expires_at <= now:
            return None
        return pub

    async def replace_publication(
        self, presentity: str, event: str, etag: str, now: float, *,
        new_etag: str, expires_at: float, body: bytes | None = None, content_type: str | None = None,
    ) -> Publication | None:
        old = self._live_pub(presentity, event, etag, now)
        if old is None:
            return None
        pubs = self._pubs[(presentity, event)]
        del pubs[etag]
        # Refreshed or modified here by SIP: this location holds it now.
        new = replace(old, etag=new_etag, expires_at=expires_at, origin="")
        if body is not None:
            new.body = body
            new.content_type = content_type or old.content_type
            new.received_at = now
        pubs[new_etag] = new
        self._unschedule_pub(old)
        self._schedule_pub(new)
        return new

    async def delete_publication(self, presentity: str, event: str, etag: str, now: float) -> Publication | None:
        old = self._live_pub(presentity, event, etag, now)
        if old is None:
            return None
        self._drop_pub(old)
        return old

    def _drop_pub(self, pub: Publication) -> None:
        key = (pub.presentity, pub.event)
        pubs = self._pubs.get(key)
        if pubs is not None:
            gone = pubs.pop(pub.etag, None)
            if gone is not None:
                self._npubs -= 1
                self._held(gone.source, -1)
                self._unschedule_pub(gone)
            if not pubs:
                del self._pubs[key]

    async def publications(self, presentity: str, event: str, now: float) -> list[Publication]:
        pubs = self._pubs.get((presentity, event))
        if not pubs:
            return []
        live = [p for p in pubs.values() if p.expires_at > now]
        live.sort(key=lambda p: p.received_at)
        return live

    async def apply_remote(self, presentity: str, event: str, old_etag: str | None, new: Publication | None) -> bool:
        changed = False
        pubs = self._pubs.get((presentity, event))
        if old_etag and pubs and old_etag in pubs:
            self._drop_pub(pubs[old_etag])
            changed = True
        if new is not None:
            self._store(new)
            changed = True
        return changed

    async def replace_replicas(
        self, origin: str, keys: Collection[Key], pubs: list[Publication], now: float
    ) -> set[Key]:
        have = [p for k in keys for p in self._pubs.get(k, {}).values() if p.origin == origin]
        changed = differing_keys(have, pubs)
        for p in have:
            if (p.presentity, p.event) in changed:
                self._drop_pub(p)
        for p in pubs:
            if (p.presentity, p.event) in changed:
                self._store(p)
        return changed

    async def replica_keys(self, origin: str) -> set[Key]:
        return {k for k, pubs in self._pubs.items() if any(p.origin == origin for p in pubs.values())}

    async def held_publications(self, keys: Collection[Key] | None, now: float) -> list[Publication]:
        scope = self._pubs.keys() if keys is None else keys
        out = [p for k in scope for p in self._pubs.get(k, {}).values() if not p.origin and p.expires_at > now]
        out.sort(key=lambda p: (p.presentity, p.event, p.received_at))
        return out

    async def forget_replicas(self, presentity: str, event: str) -> None:
        for p in list(self._pubs.get((presentity, event), {}).values()):
            if p.origin:
                self._drop_pub(p)

    async def watched_keys(self, events: Collection[str], now: float) -> set[Key]:
        return {(s.presentity, s.event) for s in self._subs.values() if s.event in events and s.expires_at > now}

    def _owned(self, node: str) -> set[str]:
        return {t.name for t in self._tags.values() if t.owner == node}

    async def expire_publications(self, now: float, node: str) -> list[Publication]:
        tags = self._owned(node)
        out: list[Publication] = []
        wheel = self._pub_wheel
        last = int(now)
        for second in sorted(s for s in wheel if s <= last):
            for etag, key in list(wheel[second].items()):
                pub = self._pubs[key][etag]
                if pub.expires_at > now or pub.tag not in tags:
                    continue  # due later this second, or another node's duty
                self._drop_pub(pub)  # takes it out of its bucket
                out.append(pub)
        return out

    # -- subscriptions -----------------------------------------------------

    async def insert_subscription(self, sub: Subscription) -> None:
        old = self._subs.get(sub.id)
        if old is not None:
            self._held(source_ip(old.source), -1)
        self._subs[sub.id] = sub
        self._held(source_ip(sub.source), 1)
        key = sub.presentity
        group = self._by_presentity.get(key)
        if group is None or (isinstance(group, Subscription) and group.id == sub.id):
            self._by_presentity[key] = sub
        elif isinstance(group, Subscription):
            self._by_presentity[key] = {group.id: group, sub.id: sub}
        else:
            group[sub.id] = sub
        self._schedule(sub.expires_at, sub.id)

    async def insert_subscription_state(
        self, sub: Subscription, now: float, watchers_of: str | None = None
    ) -> tuple[list[Publication], int]:
        await self.insert_subscription(sub)
        pubs = await self.publications(sub.presentity, sub.event, now)
        return pubs, len(await self.watchers(sub.presentity, watchers_of, now)) if watchers_of else 0

    def _schedule(self, expires_at: float, sub_id: str) -> None:
        second = int(expires_at)
        bucket = self._sub_wheel.get(second)
        if bucket is None:
            self._sub_wheel[second] = [sub_id]
        else:
            bucket.append(sub_id)
        self._wheel_size += 1
        if self._wheel_size > 3 * len(self._subs) + WHEEL_SLACK:
            wheel: dict[int, list[str]] = {}
            for sub in self._subs.values():
                wheel.setdefault(int(sub.expires_at), []).append(sub.id)
            self._sub_wheel, self._wheel_size = wheel, len(self._subs)

    async def subscription(self, sub_id: str) -> Subscription | None:
        return self._subs.get(sub_id)

    async def refresh_subscription(
        self, sub_id: str, *, expires_at: float, remote_cseq: int, contact: str | None = None
    ) -> Subscription | None:
        sub = self._subs.get(sub_id)
        if sub is None:
            return None
        sub.expires_at = expires_at
        sub.remote_cseq = remote_cseq
        if contact:
            sub.contact = contact
        self._schedule(expires_at, sub_id)
        return sub

    async def delete_subscription(self, sub_id: str, *, owner: str | None = None) -> Subscription | None:
        sub = self._subs.get(sub_id)
        if sub is None:
            return None
        if owner is not None and sub.tag not in self._owned(owner):
            return None
        del self._subs[sub_id]
        self._held(source_ip(sub.source), -1)
        key = sub.presentity
        group = self._by_presentity.get(key)
        if isinstance(group, Subscription):
            if group.id == sub_id:
                del self._by_presentity[key]
        elif group is not None:
            group.pop(sub_id, None)
            if len(group) == 1:
                self._by_presentity[key] = next(iter(group.values()))
        return sub

    async def watchers(self, presentity: str, event: str, now: float, sender: str | None = None) -> list[Subscription]:
        # One node holds them all: ``sender`` sends to every one.
        group = self._by_presentity.get(presentity)
        if group is None:
            return []
        if isinstance(group, Subscription):
            return [group] if group.event == event and group.expires_at > now else []
        return [s for s in group.values() if s.event == event and s.expires_at > now]

    async def next_notify(self, sub_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        subs = self._subs
        for sid in sub_ids:
            sub = subs.get(sid)
            if sub is None:
                continue
            sub.cseq += 1
            out[sid] = (sub.cseq, sub.version)
            sub.version += 1
        return out

    async def next_notify_state(
        self, sub_ids: Collection[str], presentity: str, event: str, now: float
    ) -> tuple[dict[str, tuple[int, int]], list[Publication]]:
        return await self.next_notify(sub_ids), await self.publications(presentity, event, now)

    async def expire_subscriptions(self, now: float, node: str) -> list[Subscription]:
        tags = self._owned(node)
        out: list[Subscription] = []
        wheel = self._sub_wheel
        last = int(now)
        for second in sorted(s for s in wheel if s <= last):
            keep: list[str] = []
            due = wheel.pop(second)
            self._wheel_size -= len(due)
            for sid in due:
                sub = self._subs.get(sid)
                if sub is None or int(sub.expires_at) != second:
                    continue  # gone, or refreshed to another second
                if sub.expires_at > now or sub.tag not in tags:
                    keep.append(sid)  # due later this second, or another node's duty
                    continue
                await self.delete_subscription(sid)
                out.append(sub)
            if keep:
                wheel[second] = keep
                self._wheel_size += len(keep)
        return out

    # -- registrations -----------------------------------------------------

    async def set_binding(self, reg: Registration) -> None:
        group = self._bindings.setdefault(reg.aor, {})
        old = group.get(reg.contact)
        if old is None:
            self._nbindings += 1
        else:
            self._held(old.source, -1)
            self._unschedule_reg(old)
        group[reg.contact] = reg
        self._held(reg.source, 1)
        self._reg_wheel.setdefault(int(reg.expires_at), {})[(reg.aor, reg.contact)] = None

    def _unschedule_reg(self, reg: Registration) -> None:
        second = int(reg.expires_at)
        bucket = self._reg_wheel.get(second)
        if bucket is not None:
            bucket.pop((reg.aor, reg.contact), None)
            if not bucket:
                del self._reg_wheel[second]

    async def delete_binding(self, aor: str, contact: str) -> None:
        group = self._bindings.get(aor)
        if group is not None:
            gone = group.pop(contact, None)
            if gone is not None:
                self._nbindings -= 1
                self._held(gone.source, -1)
                self._unschedule_reg(gone)
            if not group:
                del self._bindings[aor]

    async def bindings(self, aor: str, now: float) -> list[Registration]:
        group = self._bindings.get(aor)
        if not group:
            return []
        return [r for r in group.values() if r.expires_at > now]

    async def expire_registrations(self, now: float, node: str) -> list[Registration]:
        tags = self._owned(node)
        out: list[Registration] = []
        wheel = self._reg_wheel
        last = int(now)
        for second in sorted(s for s in wheel if s <= last):
            for aor, contact in list(wheel[second]):
                reg = self._bindings[aor][contact]
                if reg.expires_at > now or reg.tag not in tags:
                    continue  # due later this second, or another node's duty
                await self.delete_binding(aor, contact)  # takes it out of its bucket
                out.append(reg)
        return out

    async def list_registrations(self, now: float, *, aor: str | None, offset: int, limit: int) -> list[Registration]:
        if aor is not None:
            groups = [self._bindings.get(aor, {})]
        else:
            groups = [self._bindings[a] for a in sorted(self._bindings)]
        rows = [r for g in groups for _, r in sorted(g.items()) if r.expires_at > now]
        return rows[offset : offset + limit]

    # -- sharing tags -----------------------------------------------------------

    async def ensure_tags(self, configured: Mapping[str, bool], node: str, now: float) -> None:
        for name, active in configured.items():
            tag = self._tags.get(name)
            if tag is None:
                self._tags[name] = TagState(name, node if active else None, 1 if active else 0, now)
            elif active and tag.owner is None:
                self._tags[name] = TagState(name, node, tag.epoch + 1, now)

    async def tags(self) -> list[TagState]:
        return sorted((replace(t) for t in self._tags.values()), key=lambda t: t.name)

    async def activate_tag(self, name: str, node: str, now: float, epoch: int | None = None) -> TagState:
        tag = self._tags.get(name)
        if tag is None:
            raise UnknownTag(name)
        if epoch is not None and epoch <= tag.epoch:
            raise StaleEpoch(replace(tag))
        new = TagState(name, node, tag.epoch + 1 if epoch is None else epoch, now)
        self._tags[name] = new
        return replace(new)

    async def deactivate_tag(self, name: str, node: str, now: float) -> TagState:
        tag = self._tags.get(name)
        if tag is None:
            raise UnknownTag(name)
        if tag.owner == node:
            tag = self._tags[name] = TagState(name, None, tag.epoch + 1, now)
        return replace(tag)

    # -- admin listing -----------------------------------------------------

    async def list_presentities(self, now: float, *, event: str | None, offset: int, limit: int) -> list[Publication]:
        rows = [
            p
            for (_, ev), pubs in sorted(self._pubs.items())
            if event is None or ev == event
            for p in pubs.values()
            if p.expires_at > now
        ]
        return rows[offset : offset + limit]

    async def list_subscriptions(
        self, now: float, *, presentity: str | None, watcher: str | None, event: str | None, offset: int, limit: int
    ) -> list[Subscription]:
        rows = [
            s
            for s in self._subs.values()
            if s.expires_at > now
            and (presentity is None or s.presentity == presentity)
            and (watcher is None or s.watcher == watcher)
            and (event is None or s.event == event)
        ]
        rows.sort(key=lambda s: (s.presentity, s.event, s.id))
        return rows[offset : offset + limit]

    async def counts(self) -> tuple[int, int]:
        return len(self._subs), len({k[0] for k in self._pubs})

    def usage(self) -> Usage:
        return Usage(len(self._pubs), self._npubs, len(self._subs), self._nbindings, self._by_source)

    async def refresh_usage(self, source_floor: int) -> None:
        return None  # the counters are exact already

    def queue_delay(self) -> float:
        return 0.0  # nothing queues: every call completes at once

    def batch_counts(self) -> dict[str, tuple[int, int, int, int]]:
        return {}  # every step is a dict operation: nothing to group
