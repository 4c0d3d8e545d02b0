"""The storage contract, run against every backend.

Each test states one promise of :class:`presence_node.storage.Storage` that
the service relies on: compare-and-swap on etags (S39, S45), atomic
CSeq/version increments (S09, S61, S67), expiry that hands each record to
exactly one caller and only for owned tags, and watcher indexing.
"""

from __future__ import annotations

import pytest

from presence_node.storage import MemoryStorage, PresentityFull, Publication, Registration, StaleEpoch, Subscription, UnknownTag
from presence_node.storage.postgres import PostgresStorage

NOW = 1_000_000.0


def sub(i: int, presentity: str = "bob@example.com", *, expires: float = NOW + 100, tag: str = "A", event: str = "presence") -> Subscription:
    return Subscription(
        id=f"s{i}", call_id=f"c{i}", remote_tag=f"r{i}", presentity=presentity, event=event, event_header=event,
        event_params="", watcher=f"w{i}@example.com", remote_uri=f"<sip:w{i}@example.com>;tag=r{i}",
        local_uri=f"<sip:{presentity}>", contact=f"sip:w{i}@127.0.0.1:5{i:03d}", routes="", transport="udp",
        source="127.0.0.1:5000", accept="application/pidf+xml", expires_at=expires, remote_cseq=1, cseq=0,
        version=0, status="active", tag=tag,
    )


def pub(
    etag: str, presentity: str = "bob@example.com", *, expires: float = NOW + 100, tag: str = "A", at: float = NOW,
    source: str = "",
) -> Publication:
    return Publication(presentity, "presence", etag, b"<x/>", "application/pidf+xml", expires, at, tag, source=source)


@pytest.fixture(params=["memory", "postgres"])
async def storage(request):
    if request.param == "memory":
        s = MemoryStorage()
    else:
        s = PostgresStorage(request.getfixturevalue("pg_dsn"))
    await s.start()
    await s.ensure_tags({"A": True, "B": False}, "me", NOW)
    yield s
    await s.close()


async def test_watchers_follow_inserts_and_deletes_in_any_order(storage):
    for i in range(3):
        await storage.insert_subscription(sub(i))
    await storage.insert_subscription(sub(9, "carol@example.com"))
    assert sorted(s.id for s in await storage.watchers("bob@example.com", "presence", NOW)) == ["s0", "s1", "s2"]
    await storage.delete_subscription("s1")
    await storage.delete_subscription("s0")
    assert [s.id for s in await storage.watchers("bob@example.com", "presence", NOW)] == ["s2"]
    await storage.delete_subscription("s2")
    assert await storage.watchers("bob@example.com", "presence", NOW) == []
    assert [s.id for s in await storage.watchers("carol@example.com", "presence", NOW)] == ["s9"]
    assert await storage.delete_subscription("s2") is None


async def test_watchers_exclude_other_packages_and_expired(storage):
    await storage.insert_subscription(sub(1, event="dialog"))
    await storage.insert_subscription(sub(2, expires=NOW - 1))
    await storage.insert_subscription(sub(3))
    assert [s.id for s in await storage.watchers("bob@example.com", "presence", NOW)] == ["s3"]


async def test_s09_next_notify_counts_up_by_one_per_call(storage):
    await storage.insert_subscription(sub(1))
    await storage.insert_subscription(sub(2))
    first = await storage.next_notify(["s1", "s2", "gone"])
    second = await storage.next_notify(["s1"])
    assert first == {"s1": (1, 0), "s2": (1, 0)}
    assert second == {"s1": (2, 1)}


async def test_s39_replace_needs_the_live_etag(storage):
    await storage.insert_publication_watched(pub("e1"), NOW)
    assert await storage.replace_publication("bob@example.com", "presence", "nope", NOW, new_etag="x", expires_at=NOW + 5) is None
    new = await storage.replace_publication("bob@example.com", "presence", "e1", NOW, new_etag="e2", expires_at=NOW + 5, body=b"<y/>")
    assert new is not None and new.etag == "e2" and new.body == b"<y/>"
    # S45: the old etag is spent, so a second modify built on it fails.
    assert await storage.replace_publication("bob@example.com", "presence", "e1", NOW, new_etag="e3", expires_at=NOW + 5) is None
    assert [p.etag for p in await storage.publications("bob@example.com", "presence", NOW)] == ["e2"]


async def test_refresh_keeps_body_and_order(storage):
    await storage.insert_publication_watched(pub("e1", at=NOW), NOW)
    await storage.insert_publication_watched(pub("e2", at=NOW + 1), NOW)
    await storage.replace_publication("bob@example.com", "presence", "e1", NOW + 2, new_etag="e1b", expires_at=NOW + 50)
    assert [p.etag for p in await storage.publications("bob@example.com", "presence", NOW + 2)] == ["e1b", "e2"]


async def test_expired_publication_is_not_live_and_cannot_be_refreshed(storage):
    await storage.insert_publication_watched(pub("e1", expires=NOW + 1), NOW)
    assert await storage.publications("bob@example.com", "presence", NOW + 2) == []
    assert await storage.replace_publication("bob@example.com", "presence", "e1", NOW + 2, new_etag="e2", expires_at=NOW + 9) is None


async def test_expiry_returns_each_record_once_and_only_for_owned_tags(storage):
    await storage.insert_publication_watched(pub("a", expires=NOW + 1, tag="A"), NOW)
    await storage.insert_publication_watched(pub("b", expires=NOW + 1, tag="B"), NOW)
    await storage.insert_subscription(sub(1, expires=NOW + 1, tag="A"))
    await storage.insert_subscription(sub(2, expires=NOW + 1, tag="B"))
    later = NOW + 2
    # "me" owns A only: B's records wait for their owner.
    assert [p.etag for p in await storage.expire_publications(later, "me")] == ["a"]
    assert [s.id for s in await storage.expire_subscriptions(later, "me")] == ["s1"]
    assert await storage.expire_publications(later, "me") == []
    assert await storage.expire_subscriptions(later, "me") == []
    assert await storage.expire_publications(later, "other") == []
    await storage.activate_tag("B", "other", NOW)
    assert [p.etag for p in await storage.expire_publications(later, "other")] == ["b"]
    assert [s.id for s in await storage.expire_subscriptions(later, "other")] == ["s2"]


async def test_refreshed_subscription_does_not_expire_at_its_old_time(storage):
    await storage.insert_subscription(sub(1, expires=NOW + 1))
    await storage.refresh_subscription("s1", expires_at=NOW + 100, remote_cseq=2)
    assert await storage.expire_subscriptions(NOW + 2, "me") == []
    got = await storage.subscription("s1")
    assert got is not None and got.remote_cseq == 2


async def test_counts_and_listings(storage):
    await storage.insert_publication_watched(pub("e1"), NOW)
    await storage.insert_publication_watched(pub("e2", "carol@example.com"), NOW)
    for i in range(5):
        await storage.insert_subscription(sub(i, f"p{i}@example.com"))
    assert await storage.counts() == (5, 2)
    page = await storage.list_subscriptions(NOW, presentity=None, watcher=None, event=None, offset=1, limit=2)
    assert [s.id for s in page] == ["s1", "s2"]
    only = await storage.list_subscriptions(NOW, presentity="p3@example.com", watcher=None, event=None, offset=0, limit=10)
    assert [s.id for s in only] == ["s3"]


async def test_tags_activation_moves_owner_and_raises_epoch(storage):
    tags = {t.name: t for t in await storage.tags()}
    assert tags["A"].owner == "me" and tags["A"].epoch == 1
    assert tags["B"].owner is None
    moved = await storage.activate_tag("A", "other", NOW + 1)
    assert (moved.owner, moved.epoch) == ("other", 2)
    with pytest.raises(StaleEpoch):
        await storage.activate_tag("A", "me", NOW + 2, epoch=2)
    again = await storage.activate_tag("A", "me", NOW + 2, epoch=7)
    assert (again.owner, again.epoch) == ("me", 7)
    with pytest.raises(UnknownTag):
        await storage.activate_tag("nope", "me", NOW)
    with pytest.raises(UnknownTag):
        await storage.deactivate_tag("nope", "me", NOW)


async def test_deactivate_only_by_owner(storage):
    not_mine = await storage.deactivate_tag("A", "other", NOW)
    assert not_mine.owner == "me" and not_mine.epoch == 1
    released = await storage.deactivate_tag("A", "me", NOW)
    assert released.owner is None and released.epoch == 2


async def test_configured_active_never_takes_a_live_owners_tag(storage):
    await storage.activate_tag("A", "other", NOW)
    await storage.ensure_tags({"A": True, "C": False}, "me", NOW)
    tags = {t.name: t for t in await storage.tags()}
    assert tags["A"].owner == "other" and tags["A"].epoch == 2
    assert tags["C"].owner is None
    # An unowned tag configured active is taken, at the next epoch.
    await storage.ensure_tags({"C": True}, "me", NOW)
    assert {t.name: t.owner for t in await storage.tags()}["C"] == "me"


async def test_owner_only_delete(storage):
    await storage.insert_subscription(sub(1, tag="A"))
    assert await storage.delete_subscription("s1", owner="other") is None
    assert await storage.subscription("s1") is not None
    gone = await storage.delete_subscription("s1", owner="me")
    assert gone is not None and gone.id == "s1"


async def test_insert_publication_watched_stores_it_and_returns_the_live_watchers(storage):
    await storage.insert_subscription(sub(1))
    await storage.insert_subscription(sub(2, expires=NOW - 1))
    await storage.insert_subscription(sub(3, event="dialog"))
    await storage.insert_subscription(sub(4, "carol@example.com"))
    watchers = await storage.insert_publication_watched(pub("e1"), NOW)
    assert [s.id for s in watchers] == ["s1"]
    assert watchers[0].contact == sub(1).contact and watchers[0].cseq == 0
    assert [p.etag for p in await storage.publications("bob@example.com", "presence", NOW)] == ["e1"]
    assert await storage.insert_publication_watched(pub("e2", "dave@example.com"), NOW) == []


async def test_insert_subscription_state_stores_it_and_returns_state_and_watcher_count(storage):
    await storage.insert_publication_watched(pub("e2", at=NOW + 1), NOW)
    await storage.insert_publication_watched(pub("e1", at=NOW), NOW)
    await storage.insert_publication_watched(pub("old", expires=NOW - 1), NOW)
    await storage.insert_subscription(sub(7, event="presence.winfo"))
    await storage.insert_subscription(sub(8, event="presence.winfo", expires=NOW - 1))
    pubs, count = await storage.insert_subscription_state(sub(1), NOW, "presence.winfo")
    assert [p.etag for p in pubs] == ["e1", "e2"] and pubs[0].body == b"<x/>" and count == 1
    assert (await storage.subscription("s1")) is not None
    pubs, count = await storage.insert_subscription_state(sub(2), NOW)
    assert [p.etag for p in pubs] == ["e1", "e2"] and count == 0
    pubs, count = await storage.insert_subscription_state(sub(3, "carol@example.com"), NOW, "presence.winfo")
    assert pubs == [] and count == 0
    assert sorted(s.id for s in await storage.watchers("bob@example.com", "presence", NOW)) == ["s1", "s2"]


async def test_next_notify_state_counts_up_and_returns_the_live_state_oldest_first(storage):
    await storage.insert_subscription(sub(1))
    await storage.insert_subscription(sub(2))
    await storage.insert_publication_watched(pub("e2", at=NOW + 1), NOW)
    await storage.insert_publication_watched(pub("e1", at=NOW), NOW)
    await storage.insert_publication_watched(pub("old", expires=NOW - 1), NOW)
    await storage.insert_publication_watched(pub("c1", "carol@example.com"), NOW)
    numbers, pubs = await storage.next_notify_state(["s1", "s2", "gone"], "bob@example.com", "presence", NOW)
    assert numbers == {"s1": (1, 0), "s2": (1, 0)}
    assert [p.etag for p in pubs] == ["e1", "e2"] and pubs[0].body == b"<x/>"
    numbers, pubs = await storage.next_notify_state(["s1"], "dave@example.com", "presence", NOW)
    assert numbers == {"s1": (2, 1)} and pubs == []
    assert await storage.next_notify_state([], "bob@example.com", "presence", NOW) == ({}, (await storage.publications("bob@example.com", "presence", NOW)))


# -- live-state limits (#12.2, #12.6) and registration expiry (#12.7) ----------


def reg(aor: str, contact: str, *, expires: float = NOW + 100, tag: str = "A", source: str = "10.0.0.1") -> Registration:
    return Registration(aor, contact, expires, "call", 1, tag, source)


async def test_insert_publication_watched_refuses_beyond_the_per_presentity_cap(storage):
    for i in range(3):
        await storage.insert_publication_watched(pub(f"e{i}"), NOW, cap=3)
    with pytest.raises(PresentityFull):
        await storage.insert_publication_watched(pub("e3"), NOW, cap=3)
    # Refused before anything is stored; other presentities are unaffected.
    assert sorted(p.etag for p in await storage.publications("bob@example.com", "presence", NOW)) == ["e0", "e1", "e2"]
    assert await storage.insert_publication_watched(pub("c0", "carol@example.com"), NOW, cap=3) == []


async def test_usage_counts_live_records_per_kind_and_per_source(storage):
    await storage.insert_publication_watched(pub("e1", source="10.0.0.1"), NOW)
    await storage.insert_publication_watched(pub("e2", source="10.0.0.1"), NOW)
    await storage.insert_publication_watched(pub("c1", "carol@example.com", source="10.0.0.2"), NOW)
    for i in range(3):
        await storage.insert_subscription(sub(i, f"p{i}@example.com"))  # source 127.0.0.1:5000
    await storage.set_binding(reg("alice@example.com", "sip:a@10.0.0.1"))
    await storage.set_binding(reg("alice@example.com", "sip:a@10.0.0.1"))  # a refresh: still one binding
    await storage.refresh_usage(0)
    usage = storage.usage()
    assert (usage.presentities, usage.publications, usage.subscriptions, usage.registrations) == (2, 3, 3, 1)
    assert usage.source("10.0.0.1") == 3 and usage.source("10.0.0.2") == 1 and usage.source("127.0.0.1") == 3
    # Records that go are no longer counted against their source.
    await storage.delete_publication("bob@example.com", "presence", "e1", NOW)
    await storage.delete_subscription("s0")
    await storage.delete_binding("alice@example.com", "sip:a@10.0.0.1")
    await storage.refresh_usage(0)
    usage = storage.usage()
    assert (usage.publications, usage.subscriptions, usage.registrations) == (2, 2, 0)
    assert usage.source("10.0.0.1") == 1 and usage.source("127.0.0.1") == 2


async def test_refresh_usage_reports_only_sources_at_or_above_the_floor(storage):
    for i in range(3):
        await storage.insert_publication_watched(pub(f"e{i}", f"p{i}@example.com", source="10.0.0.1"), NOW)
    await storage.insert_publication_watched(pub("x", "q@example.com", source="10.0.0.2"), NOW)
    await storage.refresh_usage(2)
    usage = storage.usage()
    assert usage.source("10.0.0.1") == 3
    assert usage.source("10.0.0.2") <= 1  # below the floor: may be approximated as 0 (shared database)


async def test_expire_registrations_frees_expired_bindings_once_and_only_for_owned_tags(storage):
    await storage.set_binding(reg("a@example.com", "sip:a@h", expires=NOW + 1, tag="A"))
    await storage.set_binding(reg("b@example.com", "sip:b@h", expires=NOW + 1, tag="B"))
    await storage.set_binding(reg("c@example.com", "sip:c@h", expires=NOW + 50, tag="A"))
    later = NOW + 2
    assert [(r.aor, r.contact) for r in await storage.expire_registrations(later, "me")] == [("a@example.com", "sip:a@h")]
    assert await storage.expire_registrations(later, "me") == []
    await storage.refresh_usage(0)
    assert storage.usage().registrations == 2  # b waits for its tag's owner
    await storage.activate_tag("B", "other", NOW)
    assert [r.aor for r in await storage.expire_registrations(later, "other")] == ["b@example.com"]
    assert [r.aor for r in await storage.bindings("c@example.com", later)] == ["c@example.com"]


async def test_refreshed_binding_does_not_expire_at_its_old_time(storage):
    await storage.set_binding(reg("a@example.com", "sip:a@h", expires=NOW + 1))
    await storage.set_binding(reg("a@example.com", "sip:a@h", expires=NOW + 100))
    assert await storage.expire_registrations(NOW + 2, "me") == []


async def test_list_registrations_pages_and_filters_by_aor(storage):
    for i in range(4):
        await storage.set_binding(reg(f"u{i}@example.com", f"sip:u{i}@h"))
    await storage.set_binding(reg("u1@example.com", "sip:u1@other"))
    await storage.set_binding(reg("gone@example.com", "sip:g@h", expires=NOW - 1))
    page = await storage.list_registrations(NOW, aor=None, offset=1, limit=2)
    assert [(r.aor, r.contact) for r in page] == [("u1@example.com", "sip:u1@h"), ("u1@example.com", "sip:u1@other")]
    only = await storage.list_registrations(NOW, aor="u1@example.com", offset=0, limit=10)
    assert [r.contact for r in only] == ["sip:u1@h", "sip:u1@other"]
    assert only[0].tag == "A" and only[0].expires_at == NOW + 100


def test_every_storage_method_is_used_by_the_node():
    """The Storage protocol holds what the node needs, nothing only tests
    call: each method is called somewhere outside the backends."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "node" / "presence_node"
    backends = {root / "storage" / f for f in ("base.py", "memory.py", "postgres.py", "leases.py")}
    # Called, or handed on as a bound method (the authenticator's rule lookup).
    called = {
        n.attr
        for path in root.rglob("*.py")
        if path not in backends
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Attribute)
    }
    [protocol] = [
        n for n in ast.parse((root / "storage" / "base.py").read_text()).body
        if isinstance(n, ast.ClassDef) and n.name == "Storage"
    ]
    methods = {n.name for n in protocol.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert len(methods) > 30
    assert methods - called == set()


async def test_watcher_rules_set_replace_list_and_remove(storage):
    """#15.3: the allow/deny list of a presentity, alike on both backends."""
    assert await storage.watcher_rule("bob@example.com", "alice@example.com") is None
    assert await storage.set_watcher_rule("bob@example.com", "alice@example.com", False) is False
    assert await storage.set_watcher_rule("bob@example.com", "alice@example.com", True) is True
    await storage.set_watcher_rule("bob@example.com", "eve@example.com", False)
    assert await storage.watcher_rule("bob@example.com", "alice@example.com") is True
    assert await storage.watcher_rules("bob@example.com") == {"alice@example.com": True, "eve@example.com": False}
    assert await storage.watcher_rules("carol@example.com") == {}
    assert await storage.set_watcher_rule("bob@example.com", "eve@example.com", None) is True
    assert await storage.set_watcher_rule("bob@example.com", "eve@example.com", None) is False
    assert await storage.watcher_rules("bob@example.com") == {"alice@example.com": True}
