"""Event state publication over real sockets (RFC 3903, S33-S48)."""

from __future__ import annotations

import asyncio

from bodies import DIALOG_TYPE, basics, dialog, dialog_info, etag_of, one, pidf, publications, xml
from presence_node.sip.headers import parse_expires
from wire import expire

BOB = "sip:bob@example.com"


async def watch(make_client, user: str = "alice", uri: str = BOB):
    """A presence watcher of ``uri`` whose first NOTIFY has arrived."""
    w = await make_client(user)
    resp, d = await w.subscribe(uri)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    return w, d


async def test_s33_initial_publish_gets_one_etag_and_expires(make_client, node):
    bob = await make_client("bob")
    r = await bob.publish(pidf())
    assert r.code == 200
    assert one(r, "sip-etag")
    assert parse_expires(one(r, "expires")) == 3600
    [pub] = await publications(node)
    assert (pub.presentity, pub.event, pub.etag) == ("bob@example.com", "presence", one(r, "sip-etag"))


async def test_s33_etags_unique_across_publications(make_client):
    tags = []
    for user in ("bob", "carol", "bob", "dave"):
        c = await make_client(user)
        tags.append(etag_of(await c.publish(pidf(f"sip:{user}@example.com"))))
    assert len(set(tags)) == len(tags)


async def test_s34_expires_never_longer_than_asked(make_client):
    bob = await make_client("bob")
    assert one(await bob.publish(pidf(), expires=120), "expires") == "120"
    # Above the maximum (3600): granted the maximum, never more.
    assert one(await bob.publish(pidf(), expires=90000), "expires") == "3600"


async def test_s34_no_expires_gets_configured_default(make_node, make_client):
    n = await make_node(publication_expiry={"min": 1, "default": 1234, "max": 3600})
    bob = await make_client("bob", target=n)
    r = await bob.publish(pidf(), expires=None)  # pjsua2 sends no Expires
    assert r.code == 200 and one(r, "expires") == "1234"
    [pub] = await publications(n)
    assert 1230 <= pub.expires_at - pub.received_at <= 1234


async def test_s35_too_brief_gets_423_with_min_expires(make_node, make_client):
    n = await make_node(publication_expiry={"min": 60, "default": 3600, "max": 3600})
    bob = await make_client("bob", target=n)
    r = await bob.publish(pidf(), expires=30)
    assert r.code == 423
    assert one(r, "min-expires") == "60"
    assert await publications(n) == []
    # A refresh that is too brief is refused the same way.
    tag = etag_of(await bob.publish(pidf(), expires=600))
    r = await bob.publish(None, etag=tag, expires=10)
    assert r.code == 423 and one(r, "min-expires") == "60"


async def test_s36_refresh_gives_new_etag_and_no_notify(make_client, node):
    bob = await make_client("bob")
    first = etag_of(await bob.publish(pidf(note="here")))
    alice, d = await watch(make_client)
    seen = [first]
    for _ in range(3):
        r = await bob.publish(None, etag=seen[-1], expires=600)
        seen.append(etag_of(r))
        assert one(r, "expires") == "600"
    assert len(set(seen)) == len(seen), "an etag was issued twice"
    # State unchanged, one publication, carrying the last etag.
    [pub] = await publications(node)
    assert pub.etag == seen[-1] and b"here" in pub.body
    # Old tags no longer match anything.
    assert (await bob.publish(None, etag=seen[0], expires=600)).code == 412
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 1, "a refresh must not notify"


async def test_s37_modify_replaces_state_new_etag_and_notifies(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(basic="open", note="first")))
    alice, d = await watch(make_client)
    r = await bob.publish(pidf(basic="closed", note="second"), etag=tag)
    new = etag_of(r)
    assert new != tag
    [_, n] = await alice.dialog_notifies(d, 2)
    root = xml(n)
    assert basics(root) == ["closed"]
    assert root.findtext(".//{urn:ietf:params:xml:ns:pidf}note") == "second"
    [pub] = await publications(node)
    assert pub.etag == new


async def test_s37_modify_replaces_only_that_publication(make_client, node):
    desk = await make_client("bob")
    soft = await make_client("bob")
    t_desk = etag_of(await desk.publish(pidf(tuple_id="desk", note="desk")))
    etag_of(await soft.publish(pidf(tuple_id="soft", note="soft")))
    etag_of(await desk.publish(pidf(tuple_id="desk", basic="closed", note="desk2"), etag=t_desk))
    bodies = sorted(p.body for p in await publications(node))
    assert len(bodies) == 2
    assert any(b"desk2" in b for b in bodies) and any(b"soft" in b for b in bodies)


async def test_s38_remove_deletes_state_and_notifies_offline(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(basic="open")))
    alice, d = await watch(make_client)
    assert basics(xml(alice.notifies_for(d)[0])) == ["open"]
    r = await bob.publish(None, etag=tag, expires=0)
    assert r.code == 200
    assert await publications(node) == []
    [_, n] = await alice.dialog_notifies(d, 2)
    root = xml(n)
    assert root.get("entity") == BOB
    assert basics(root) == ["closed"]
    # Removed means gone: the tag no longer matches.
    assert (await bob.publish(None, etag=tag, expires=0)).code == 412


async def test_s39_unknown_etag_gets_412(make_client, node):
    bob = await make_client("bob")
    r = await bob.publish(pidf(), etag="no-such-etag")
    assert r.code == 412
    assert (await bob.publish(None, etag="no-such-etag")).code == 412
    assert await publications(node) == []


async def test_s39_etag_of_another_resource_or_package_gets_412(make_client):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf()))
    carol = await make_client("carol")
    assert (await carol.publish(None, etag=tag)).code == 412
    assert (await bob.publish(None, etag=tag, event="dialog")).code == 412
    assert (await bob.publish(None, etag=tag)).code == 200


async def test_s39_expired_etag_gets_412(make_client, node, clock):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(), expires=1))
    clock.advance(1.2)
    assert (await bob.publish(None, etag=tag, expires=60)).code == 412
    assert await publications(node) == []


async def test_s40_two_etags_gets_400(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf()))
    # One header line holding two tags, and two header lines.
    r = await bob.publish(None, expires=60, extra=[("SIP-If-Match", f"{tag}, {tag}x")])
    assert r.code == 400
    r = await bob.publish(None, etag=tag, expires=60, extra=[("SIP-If-Match", "other")])
    assert r.code == 400
    [pub] = await publications(node)
    assert pub.etag == tag, "a refused PUBLISH must not refresh"


async def test_s41_missing_or_unsupported_event_gets_489(make_client, node):
    bob = await make_client("bob")
    hs = [("Expires", "60"), ("Content-Type", "application/pidf+xml")]
    r = await bob.request(bob.build("PUBLISH", BOB, hs, pidf()))
    assert r.code == 489
    assert "presence" in (r.headers.get("allow-events") or "")
    for event in ("foo", "Presence", "presence.winfo"):
        r = await bob.publish(pidf(), event=event)
        assert r.code == 489, event
    assert await publications(node) == []


async def test_s42_domain_not_served_gets_404(make_node, make_client):
    n = await make_node(domains=["example.com"])
    c = await make_client("bob", target=n)
    r = await c.publish(pidf("sip:bob@example.org"), uri="sip:bob@example.org")
    assert r.code == 404
    assert await publications(n) == []
    # D2: the same for a SUBSCRIBE, and the served domain still works.
    resp, _ = await c.subscribe("sip:bob@example.org")
    assert resp.code == 404
    assert (await c.publish(pidf())).code == 200
    assert (await c.subscribe(BOB))[0].code == 200


async def test_s43_no_body_and_no_etag_gets_400(make_client, node):
    bob = await make_client("bob")
    r = await bob.publish(None)
    assert r.code == 400
    assert await publications(node) == []


async def test_s44_wrong_content_type_gets_415_with_accept(make_client, node):
    bob = await make_client("bob")
    r = await bob.publish(b"I am here", ctype="text/plain")
    assert r.code == 415
    assert "application/pidf+xml" in one(r, "accept")
    # A dialog-info body is not presence state either, nor PIDF for dialog.
    r = await bob.publish(dialog_info(BOB, dialog("d1")), ctype=DIALOG_TYPE)
    assert r.code == 415
    r = await bob.publish(pidf(), event="dialog")
    assert r.code == 415 and DIALOG_TYPE in one(r, "accept")
    # A body without any Content-Type is not understood either.
    r = await bob.request(bob.build("PUBLISH", BOB, [("Event", "presence"), ("Expires", "60")], pidf()))
    assert r.code == 415
    assert await publications(node) == []


async def test_s45_conflicting_modifies_on_one_etag_exactly_one_wins(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(note="base")))
    clients = [await make_client("bob") for _ in range(12)]
    results = await asyncio.gather(
        *(c.publish(pidf(note=f"update {i}"), etag=tag) for i, c in enumerate(clients))
    )
    codes = sorted(r.code for r in results)
    assert codes == [200] + [412] * 11, codes
    [winner] = [(i, r) for i, r in enumerate(results) if r.code == 200]
    [pub] = await publications(node)
    assert pub.etag == one(winner[1], "sip-etag")
    assert f"update {winner[0]}".encode() in pub.body


async def test_s45_sequential_publishes_apply_in_arrival_order(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(note="n0")))
    for i in range(1, 6):
        tag = etag_of(await bob.publish(pidf(note=f"n{i}"), etag=tag))
    [pub] = await publications(node)
    assert pub.etag == tag and b"<note>n5</note>" in pub.body


async def test_s46_no_record_route_in_response_and_contact_ignored(make_client, node):
    bob = await make_client("bob")
    extra = [("Record-Route", "<sip:proxy.example.net;lr>"), ("Contact", "<sip:elsewhere.example.net>")]
    r = await bob.publish(pidf(), extra=extra)
    assert r.code == 200
    assert "record-route" not in r.headers
    alice, d = await watch(make_client)
    # The watcher's state comes from the body; the PUBLISH Contact changes nothing.
    assert basics(xml(alice.notifies_for(d)[0])) == ["open"]


async def test_s47_expired_publication_is_dropped_and_notified(make_client, node, clock):
    bob = await make_client("bob")
    etag_of(await bob.publish(pidf(basic="open"), expires=1))
    alice, d = await watch(make_client)
    assert basics(xml(alice.notifies_for(d)[0])) == ["open"]
    await expire(node, clock, 1.1)
    [_, n] = await alice.dialog_notifies(d, 2)
    assert basics(xml(n)) == ["closed"]
    assert await publications(node) == []


async def test_s47_expiry_drops_only_the_expired_publication(make_client, node, clock):
    short = await make_client("bob")
    long = await make_client("bob")
    etag_of(await short.publish(pidf(tuple_id="short", basic="open"), expires=1))
    etag_of(await long.publish(pidf(tuple_id="long", basic="closed"), expires=600))
    alice, d = await watch(make_client)
    assert len(xml(alice.notifies_for(d)[0]).findall("{urn:ietf:params:xml:ns:pidf}tuple")) == 2
    await expire(node, clock, 1.1)
    [_, n] = await alice.dialog_notifies(d, 2)
    root = xml(n)
    assert [t.get("id") for t in root.iterfind("{urn:ietf:params:xml:ns:pidf}tuple")] == ["long"]
    [left] = await publications(node)
    assert b'id="long"' in left.body


async def test_s48_fresh_publish_after_412_is_accepted(make_client, node, clock):
    bob = await make_client("bob")
    stale = etag_of(await bob.publish(pidf(basic="closed"), expires=1))
    clock.advance(1.2)
    assert (await bob.publish(pidf(basic="open"), etag=stale)).code == 412
    r = await bob.publish(pidf(basic="open"))  # what baresip does next
    fresh = etag_of(r)
    assert fresh != stale
    [pub] = await publications(node)
    assert pub.etag == fresh
    alice, d = await watch(make_client)
    assert basics(xml(alice.notifies_for(d)[0])) == ["open"]


def neighbours(etag: str, spread: int = 8) -> list[str]:
    """Guesses of the etags minted just before and after ``etag``: its last
    field read as a hexadecimal counter, plus or minus up to ``spread``."""
    head, _, last = etag.rpartition(".")
    try:
        n = int(last, 16)
    except ValueError:
        n = int.from_bytes(last.encode(), "big")
    return [f"{head}.{n + d:x}" for d in range(-spread, spread + 1) if d] + [etag[:-1] + c for c in "0123456789abcdefAZ_-"]


async def test_s39_a_neighbour_etag_guess_gets_412(make_client, node):
    """S39, #12.11: knowing one's own etag does not reveal another's: guesses
    built from it (previous+1 style) are unknown etags, and change nothing."""
    mallory = await make_client("mallory")
    mine = etag_of(await mallory.publish(pidf("sip:mallory@example.com")))
    carol = await make_client("carol")
    theirs = etag_of(await carol.publish(pidf("sip:carol@example.com")))
    accepted = [g for g in dict.fromkeys(neighbours(mine))
                if (await mallory.publish(None, etag=g, expires=0, uri="sip:carol@example.com")).code != 412]
    assert accepted == []
    assert sorted(p.etag for p in await publications(node)) == sorted([mine, theirs])
