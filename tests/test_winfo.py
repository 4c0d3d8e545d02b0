"""Watcher information over real sockets (RFC 3857/3858: S58-S63, D4)."""

from __future__ import annotations

import time

from bodies import NS, WINFO_TYPE, cseq_no, xml
from wire import expire

BOB = "sip:bob@example.com"
STATUSES = {"pending", "active", "waiting", "terminated"}
EVENTS = {"subscribe", "approved", "deactivated", "probation", "rejected", "timeout", "giveup", "noresource"}


async def winfo_of_bob(make_client, transport: str = "udp", **kw):
    """bob watching his own watcher list; the first NOTIFY has arrived and
    been answered."""
    bob = await make_client("bob", transport)
    resp, d = await bob.subscribe(BOB, event="presence.winfo", **kw)
    assert resp.code == 200, f"{resp.code} {resp.reason}"
    await bob.dialog_notifies(d, 1)
    await bob.round_trip()  # our 200 to that NOTIFY reached the node first
    return bob, d


def ordered(client, d):
    return sorted(client.notifies_for(d), key=cseq_no)


def check_shape(root) -> list:
    """S62: <watcherinfo> with a <watcher-list> for bob's presence; each
    watcher has id, status and event from the RFC's sets, and a URI as text."""
    assert root.tag == "{urn:ietf:params:xml:ns:watcherinfo}watcherinfo"
    assert root.get("state") in ("full", "partial")
    assert root.get("version", "").isdigit()
    [wl] = root.findall("w:watcher-list", NS)
    assert wl.get("resource") == BOB
    assert wl.get("package") == "presence"
    watchers = wl.findall("w:watcher", NS)
    for w in watchers:
        assert w.get("id")
        assert w.get("status") in STATUSES, w.get("status")
        assert w.get("event") in EVENTS, w.get("event")
        assert (w.text or "").startswith("sip:")
    ids = [w.get("id") for w in watchers]
    assert len(set(ids)) == len(ids)
    return watchers


async def test_s58_winfo_supported_with_watcherinfo_body(make_client):
    bob, d = await winfo_of_bob(make_client)
    [n] = bob.notifies_for(d)
    assert n.headers.get("event") == "presence.winfo"
    assert n.headers.get("content-type") == WINFO_TYPE
    assert (n.headers.get("subscription-state") or "").startswith("active")
    check_shape(xml(n))


async def test_s58_accept_without_watcherinfo_gets_406(make_client):
    bob = await make_client("bob")
    resp, _ = await bob.subscribe(BOB, event="presence.winfo", accept="application/pidf+xml")
    assert resp.code == 406


async def test_s59_d4_another_user_gets_403(make_client, node):
    alice = await make_client("alice")
    resp, d = await alice.subscribe(BOB, event="presence.winfo")
    assert resp.code == 403
    await alice.round_trip()
    assert alice.notifies_for(d) == []
    assert await node.storage.list_subscriptions(time.time(), presentity=None, watcher=None,
                                                 event="presence.winfo", offset=0, limit=10) == []


async def test_s60_full_first_then_partial_then_full_after_refresh(make_client):
    bob, d = await winfo_of_bob(make_client)
    assert xml(bob.notifies_for(d)[0]).get("state") == "full"
    alice = await make_client("alice")
    resp, _ = await alice.subscribe(BOB)
    assert resp.code == 200
    await bob.dialog_notifies(d, 2)
    second = xml(ordered(bob, d)[1])
    assert second.get("state") == "partial"
    assert (await bob.resubscribe(d, 600)).code == 200
    await bob.dialog_notifies(d, 3)
    third = xml(ordered(bob, d)[2])
    assert third.get("state") == "full"
    [w] = check_shape(third)
    assert w.text == "sip:alice@example.com"


async def test_s61_version_starts_at_0_and_rises_by_one(make_client):
    bob, d = await winfo_of_bob(make_client)
    watchers = []
    for i, user in enumerate(("alice", "carol", "dave")):
        c = await make_client(user)
        resp, wd = await c.subscribe(BOB)
        assert resp.code == 200
        watchers.append((c, wd))
        await bob.dialog_notifies(d, i + 2)
        await bob.round_trip()
    c, wd = watchers[0]
    assert (await c.resubscribe(wd, 0)).code == 200
    await bob.dialog_notifies(d, 5)
    assert (await bob.resubscribe(d, 600)).code == 200
    await bob.dialog_notifies(d, 6)
    await bob.round_trip()
    assert (await bob.resubscribe(d, 0)).code == 200
    await bob.dialog_notifies(d, 7)
    assert ordered(bob, d)[-1].headers.get("subscription-state") == "terminated;reason=timeout"
    versions = [int(xml(n).get("version")) for n in ordered(bob, d)]
    assert versions == list(range(7)), versions
    # Versions are per subscription: a second winfo subscription starts at 0.
    bob2, d2 = await winfo_of_bob(make_client)
    assert xml(bob2.notifies_for(d2)[0]).get("version") == "0"


async def test_s62_full_document_lists_existing_watchers(make_client):
    subs = {}
    for user in ("alice", "carol"):
        c = await make_client(user)
        resp, wd = await c.subscribe(BOB)
        assert resp.code == 200
        subs[user] = resp
    # Someone watching another presentity is not bob's watcher.
    c = await make_client("dave")
    assert (await c.subscribe("sip:erin@example.com"))[0].code == 200
    bob, d = await winfo_of_bob(make_client)
    root = xml(bob.notifies_for(d)[0])
    assert root.get("state") == "full" and root.get("version") == "0"
    watchers = check_shape(root)
    assert sorted(w.text for w in watchers) == ["sip:alice@example.com", "sip:carol@example.com"]
    assert {w.get("status") for w in watchers} == {"active"}


async def test_s63_new_watcher_then_unsubscribe(make_client):
    bob, d = await winfo_of_bob(make_client, transport="tcp")
    alice = await make_client("alice")
    resp, ad = await alice.subscribe(BOB)
    assert resp.code == 200
    await bob.dialog_notifies(d, 2)
    n = xml(ordered(bob, d)[1])
    assert n.get("state") == "partial"
    [w] = check_shape(n)
    assert w.text == "sip:alice@example.com"
    assert (w.get("status"), w.get("event")) in {("active", "subscribe"), ("pending", "subscribe")}
    first_id = w.get("id")
    await bob.round_trip()
    assert (await alice.resubscribe(ad, 0)).code == 200
    await bob.dialog_notifies(d, 3)
    n = xml(ordered(bob, d)[2])
    assert n.get("state") == "partial"
    [w] = check_shape(n)
    assert (w.text, w.get("status"), w.get("event")) == ("sip:alice@example.com", "terminated", "timeout")
    assert w.get("id") == first_id


async def test_s63_watcher_expiry_is_reported_as_timeout(make_client, node, clock):
    bob, d = await winfo_of_bob(make_client)
    alice = await make_client("alice")
    resp, _ = await alice.subscribe(BOB, expires=1)
    assert resp.code == 200
    await bob.dialog_notifies(d, 2)
    await expire(node, clock, 1.1)
    await bob.dialog_notifies(d, 3)
    [w] = check_shape(xml(ordered(bob, d)[2]))
    assert (w.text, w.get("status"), w.get("event")) == ("sip:alice@example.com", "terminated", "timeout")


async def test_s63_non_presence_watchers_are_not_listed(make_client):
    bob, d = await winfo_of_bob(make_client)
    alice = await make_client("alice")
    assert (await alice.subscribe(BOB, event="dialog"))[0].code == 200
    assert (await alice.subscribe("sip:carol@example.com"))[0].code == 200
    await bob.round_trip()
    assert len(bob.notifies_for(d)) == 1
