"""Section B of rfc-behaviours.md (S13-S32): the SUBSCRIBE/NOTIFY framework
of RFC 6665, checked over real sockets against a node on loopback.

Not covered here:
- S30 (migration: ``terminated;reason=deactivated`` when a node hands a
  subscription off) is a cluster behaviour; a single node never hands off,
  so it is left for the cluster tests (S80) rather than inventing behaviour.
- S31 (the notifier's Contact is a GRUU) is out of scope by decision D9.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bodies import eventually
from presence_node.storage import MemoryStorage
from sipclient import SipClient
from wire import cseq_num, expire, pidf, publications, raw_request, snapshot, sub_state, subscriptions, tag

BOB = "sip:bob@example.com"
STRICT = {"subscription_expiry": {"min": 60, "default": 3600, "max": 3600}}


# -- S13 -------------------------------------------------------------------------


@pytest.mark.parametrize("event,user", [("presence", "alice"), ("dialog", "alice"), ("presence.winfo", "bob")])
async def test_s13_accepted_subscribe_gets_200_never_202(node, make_client, event, user):
    c = await make_client(user)
    resp, d = await c.subscribe(BOB, event=event)
    assert resp.code == 200
    assert d.to_tag
    [sub] = await subscriptions(node)
    assert sub.id == d.to_tag and sub.event == event and sub.presentity == "bob@example.com"


# -- S14 -------------------------------------------------------------------------


@pytest.mark.parametrize("asked", [60, 61, 3599, 3600, 3601, 86400, 2**32 - 1])
async def test_s14_200_carries_expires_never_longer_than_asked(make_node, make_client, asked):
    node = await make_node(subscription_expiry={"min": 60, "default": 600, "max": 3600})
    c = await make_client("alice", target=node)
    resp, d = await c.subscribe(BOB, expires=asked)
    assert resp.code == 200
    granted = int(resp.headers.get("expires"))
    assert 0 < granted <= asked
    assert granted == min(asked, 3600)  # configured maximum (D10)
    [sub] = await subscriptions(node)
    assert sub.expires_at - time.time() <= granted + 0.5


async def test_s14_refresh_200_carries_expires(make_client):
    c = await make_client("alice")
    _, d = await c.subscribe(BOB, expires=600)
    resp = await c.resubscribe(d, 300)
    assert resp.code == 200
    assert 0 < int(resp.headers.get("expires")) <= 300


# -- S15 -------------------------------------------------------------------------


@pytest.mark.parametrize("event,user", [("presence", "alice"), ("dialog", "alice"), ("presence.winfo", "bob")])
async def test_s15_no_expires_gets_package_default(make_client, event, user):
    c = await make_client(user)
    resp, d = await c.subscribe(BOB, event=event, expires=None)
    assert resp.code == 200
    assert int(resp.headers.get("expires")) == 3600
    [n] = await c.dialog_notifies(d, 1)
    state, params = sub_state(n)
    assert state == "active" and 3590 <= int(params["expires"]) <= 3600


async def test_s15_default_is_configurable_and_not_above_3600(make_node, make_client):
    node = await make_node(subscription_expiry={"min": 60, "default": 900, "max": 3600})
    c = await make_client("alice", target=node)
    resp, _ = await c.subscribe(BOB, expires=None)
    assert int(resp.headers.get("expires")) == 900


# -- S16 -------------------------------------------------------------------------


@pytest.mark.parametrize("asked", [1, 30, 59])
async def test_s16_too_brief_gets_423_with_min_expires(make_node, make_client, asked):
    node = await make_node(**STRICT)
    c = await make_client("alice", target=node)
    before = await snapshot(node)
    resp, _ = await c.subscribe(BOB, expires=asked)
    assert resp.code == 423
    assert resp.headers.get("min-expires") == "60"
    await c.round_trip()
    assert c.notifies == []
    assert await snapshot(node) == before


async def test_s16_min_expires_follows_configuration(make_node, make_client):
    node = await make_node(subscription_expiry={"min": 120, "default": 3600, "max": 3600})
    c = await make_client("alice", target=node)
    resp, _ = await c.subscribe(BOB, expires=100)
    assert resp.code == 423 and resp.headers.get("min-expires") == "120"
    resp, _ = await c.subscribe(BOB, expires=120)
    assert resp.code == 200


async def test_s16_too_brief_refresh_gets_423_and_keeps_subscription(make_node, make_client):
    node = await make_node(**STRICT)
    c = await make_client("alice", target=node)
    _, d = await c.subscribe(BOB, expires=600)
    await c.dialog_notifies(d, 1)
    before = await snapshot(node)
    resp = await c.resubscribe(d, 10)
    assert resp.code == 423
    assert resp.headers.get("min-expires") == "60"
    assert tag(resp.headers.get("to")) == d.to_tag
    await c.round_trip()
    assert await snapshot(node) == before
    assert len(c.notifies_for(d)) == 1
    assert (await c.resubscribe(d, 600)).code == 200


async def test_s16_expires_zero_is_not_too_brief(make_node, make_client):
    node = await make_node(**STRICT)
    c = await make_client("alice", target=node)
    resp, _ = await c.subscribe(BOB, expires=0)
    assert resp.code == 200


# -- S17 -------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, "no-such-package", "Presence", "PRESENCE", "winfo", "presence.foo", "@@"])
async def test_s17_missing_or_unknown_event_gets_489(node, make_client, event):
    c = await make_client("alice")
    before = await snapshot(node)
    hs = ["Expires: 600"] + ([f"Event: {event}"] if event is not None else [])
    resp = await c.request(raw_request(c, "SUBSCRIBE", BOB, hs))
    assert resp.code == 489
    events = {e.strip() for e in resp.headers.values("allow-events")}
    assert events == {"presence", "presence.winfo", "dialog", "message-summary", "as-feature-event"}
    await c.round_trip()
    assert await snapshot(node) == before
    assert c.notifies == []


async def test_s17_disabled_package_gets_489(make_node, make_client):
    node = await make_node(packages=["presence"])
    c = await make_client("alice", target=node)
    resp, _ = await c.subscribe(BOB, event="dialog")
    assert resp.code == 489
    assert [e.strip() for e in resp.headers.values("allow-events")] == ["presence"]
    assert await subscriptions(node) == []


# -- S18 -------------------------------------------------------------------------


async def test_s18_initial_notify_carries_current_state_within_1s(make_client):
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob", note="in a meeting"))).code == 200
    alice = await make_client("alice")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp, d = await alice.subscribe(BOB)
    assert resp.code == 200
    [n] = await alice.dialog_notifies(d, 1, timeout=1.0)
    assert loop.time() - t0 < 1.0
    assert n.body == pidf("bob", note="in a meeting")
    assert n.headers.get("content-type") == "application/pidf+xml"


async def test_s18_refresh_notify_carries_current_state(make_client):
    bob = await make_client("bob")
    r = await bob.publish(pidf("bob", note="one"))
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB)
    await alice.dialog_notifies(d, 1)
    r = await bob.publish(pidf("bob", note="two"), etag=r.headers.get("sip-etag"))
    await alice.dialog_notifies(d, 2)
    assert (await alice.resubscribe(d, 600)).code == 200
    ns = await alice.dialog_notifies(d, 3, timeout=1.0)
    assert ns[2].body == pidf("bob", note="two")
    assert sub_state(ns[2])[0] == "active"


async def test_s18_offline_presentity_gets_closed_pidf(make_client):
    """D3: no live publication → a valid PIDF for the entity with ``closed``."""
    alice = await make_client("alice")
    _, d = await alice.subscribe("sip:nobody@example.com")
    [n] = await alice.dialog_notifies(d, 1)
    assert b'entity="sip:nobody@example.com"' in n.body
    assert b"<basic>closed</basic>" in n.body
    assert b"<basic>open</basic>" not in n.body


# -- S19 -------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["presence", "presence;id=abc", "dialog", "dialog;id=7", "presence.winfo;id=w1"])
async def test_s19_notify_event_matches_subscribe(make_client, event):
    c = await make_client("bob")
    resp, d = await c.subscribe(BOB, event=event)
    assert resp.code == 200
    [n] = await c.dialog_notifies(d, 1)
    assert n.headers.get("event") == event
    # The same Event in a refresh matches the subscription, and its NOTIFY
    # repeats it.
    assert (await c.resubscribe(d, 600)).code == 200
    ns = await c.dialog_notifies(d, 2)
    assert ns[1].headers.get("event") == event


async def test_s19_refresh_with_different_id_is_another_subscription(node, make_client):
    """``id`` takes part in matching: a refresh naming another id matches no
    subscription (481), and the original one is untouched."""
    c = await make_client("alice")
    _, d = await c.subscribe(BOB, event="presence;id=one")
    before = await snapshot(node)
    d.event = "presence;id=two"
    assert (await c.resubscribe(d, 600)).code == 481
    assert await snapshot(node) == before


# -- S20 -------------------------------------------------------------------------


async def test_s20_active_notify_has_expires_not_above_granted(make_client, clock):
    bob = await make_client("bob")
    alice = await make_client("alice")
    resp, d = await alice.subscribe(BOB, expires=300)
    granted = int(resp.headers.get("expires"))
    [n] = await alice.dialog_notifies(d, 1)
    state, params = sub_state(n)
    assert state == "active"
    assert params.get("expires") is not None
    assert 0 <= int(params["expires"]) <= granted
    assert granted - int(params["expires"]) <= 1
    clock.advance(1.1)
    assert (await bob.publish(pidf("bob"))).code == 200
    ns = await alice.dialog_notifies(d, 2)
    state, params = sub_state(ns[1])
    assert state == "active"
    assert int(params["expires"]) < granted  # time remaining, not the original grant


# -- S21 -------------------------------------------------------------------------


async def test_s21_terminated_notify_has_reason_and_no_expires(make_client):
    c = await make_client("alice")
    _, d = await c.subscribe(BOB)
    await c.dialog_notifies(d, 1)
    assert (await c.resubscribe(d, 0)).code == 200
    ns = await c.dialog_notifies(d, 2)
    state, params = sub_state(ns[1])
    assert state == "terminated"
    assert params.get("reason") in {"deactivated", "probation", "rejected", "timeout", "giveup", "noresource",
                                    "invariant"}
    assert "expires" not in params


# -- S22 -------------------------------------------------------------------------


async def test_s22_refresh_extends_and_notifies_full_state(node, make_client):
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob", note="here"))).code == 200
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB, expires=100)
    [sub] = await subscriptions(node)
    old_expiry = sub.expires_at
    await alice.dialog_notifies(d, 1)
    resp = await alice.resubscribe(d, 900)
    assert resp.code == 200
    granted = int(resp.headers.get("expires"))
    assert 100 < granted <= 900
    [sub] = await subscriptions(node)
    assert sub.expires_at > old_expiry + 700
    ns = await alice.dialog_notifies(d, 2)
    assert ns[1].body == pidf("bob", note="here")
    assert int(sub_state(ns[1])[1]["expires"]) <= granted


async def test_s22_refresh_may_shorten(node, make_client):
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB, expires=3000)
    resp = await alice.resubscribe(d, 120)
    assert resp.code == 200 and int(resp.headers.get("expires")) <= 120
    [sub] = await subscriptions(node)
    assert sub.expires_at - time.time() <= 121


# -- S23 -------------------------------------------------------------------------


async def test_s23_unsubscribe_final_notify_then_nothing_then_481(node, make_client):
    bob = await make_client("bob")
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB)
    await alice.dialog_notifies(d, 1)
    resp = await alice.resubscribe(d, 0)
    assert resp.code == 200
    assert int(resp.headers.get("expires")) == 0
    ns = await alice.dialog_notifies(d, 2)
    assert sub_state(ns[1]) == ("terminated", {"reason": "timeout"})
    assert await subscriptions(node) == []
    # A state change afterwards reaches nobody on that dialog.
    assert (await bob.publish(pidf("bob"))).code == 200
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 2
    assert (await alice.resubscribe(d, 600)).code == 481
    assert (await alice.resubscribe(d, 0)).code == 481
    assert await subscriptions(node) == []


# -- S24 -------------------------------------------------------------------------


async def test_s24_poll_gets_one_terminated_notify_with_state(node, make_client):
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob", note="polled"))).code == 200
    before = await snapshot(node)
    alice = await make_client("alice")
    resp, d = await alice.subscribe(BOB, expires=0)
    assert resp.code == 200
    assert int(resp.headers.get("expires")) == 0
    [n] = await alice.dialog_notifies(d, 1)
    assert sub_state(n) == ("terminated", {"reason": "timeout"})
    assert n.body == pidf("bob", note="polled")
    assert tag(n.headers.get("from")) == d.to_tag
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 1
    assert await snapshot(node) == before  # a poll stores nothing
    # and a later change is not sent to the poller
    assert (await bob.publish(pidf("bob"))).code == 200
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 1


# -- S25 -------------------------------------------------------------------------


async def test_s25_unrefreshed_subscription_expires_with_timeout_notify(node, make_client, clock):
    bob = await make_client("bob")
    alice = await make_client("alice")
    resp, d = await alice.subscribe(BOB, expires=1)
    assert resp.code == 200 and resp.headers.get("expires") == "1"
    await alice.dialog_notifies(d, 1)
    clock.advance(1.1)  # the node's own expiry sweep ends it
    ns = await alice.dialog_notifies(d, 2)
    assert sub_state(ns[1]) == ("terminated", {"reason": "timeout"})
    assert await subscriptions(node) == []
    assert (await bob.publish(pidf("bob"))).code == 200
    await expire(node, clock, 1.0)
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 2
    assert (await alice.resubscribe(d, 600)).code == 481


async def test_s25_refreshed_subscription_does_not_expire(node, make_client, clock):
    alice = await make_client("alice")
    _, d = await alice.subscribe(BOB, expires=1)
    await alice.dialog_notifies(d, 1)
    assert (await alice.resubscribe(d, 600)).code == 200
    await expire(node, clock, 1.5)
    await alice.round_trip()
    assert all(sub_state(n)[0] == "active" for n in alice.notifies_for(d))
    assert len(await subscriptions(node)) == 1


# -- S26 -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 405, 410, 416, 480, 481, 482, 483, 484, 485, 489, 501, 604])
async def test_s26_fatal_notify_answer_removes_subscription(node, make_client, code):
    bob = await make_client("bob")
    alice = await make_client("alice")
    alice.notify_answer = code
    resp, d = await alice.subscribe(BOB)
    assert resp.code == 200
    await alice.dialog_notifies(d, 1)
    await alice.round_trip()  # its answer reached the node first
    assert await subscriptions(node) == []
    assert (await bob.publish(pidf("bob"))).code == 200
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 1, "no NOTIFY after the subscription was removed"
    assert (await alice.resubscribe(d, 600)).code == 481


class _SlowDelete(MemoryStorage):
    """Removal takes a while, as a statement on a busy PostgreSQL does."""

    async def delete_subscription(self, sub_id, *, owner=None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.3)
        return await super().delete_subscription(sub_id, owner=owner)


async def test_s26_no_notify_while_the_failed_subscription_is_being_removed(make_node, open_clients):
    """S26: after a NOTIFY is answered 481, no later NOTIFY goes to that
    dialog, even for a change that arrives before the removal is stored."""
    node = await make_node(storage_override=_SlowDelete())
    bob = await SipClient(("127.0.0.1", node.sip_port), "udp", "bob").open()
    alice = await SipClient(("127.0.0.1", node.sip_port), "udp", "alice").open()
    open_clients.extend([bob, alice])
    _, d = await alice.subscribe(BOB)
    await alice.dialog_notifies(d, 1)
    alice.notify_answer = 481
    assert (await bob.publish(pidf("bob", note="one"))).code == 200
    await alice.dialog_notifies(d, 2)  # answered 481: the removal starts
    assert (await bob.publish(pidf("bob", note="two"))).code == 200

    async def removed() -> bool:
        return await subscriptions(node) == []

    await eventually(removed)  # the slow removal is stored
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 2, "a NOTIFY went to a dialog answered 481"


@pytest.mark.parametrize("code", [500, 503, 486, 603])
async def test_s26_transaction_only_failure_keeps_subscription(node, make_client, code):
    """Codes outside the S26 list fail only the transaction (RFC 5057 §5.1):
    the subscription stays and later changes are still notified."""
    bob = await make_client("bob")
    alice = await make_client("alice")
    alice.notify_answer = code
    _, d = await alice.subscribe(BOB)
    await alice.dialog_notifies(d, 1)
    await alice.round_trip()  # its answer reached the node first
    assert len(await subscriptions(node)) == 1
    alice.notify_answer = 200
    assert (await bob.publish(pidf("bob", note="later"))).code == 200
    ns = await alice.dialog_notifies(d, 2)
    assert ns[1].body == pidf("bob", note="later")


async def test_s26_timer_f_timeout_removes_subscription(make_node, make_client):
    node = await make_node(notify={"t1": 0.02, "t2": 0.1})
    bob = await make_client("bob", target=node)
    alice = await make_client("alice", target=node)
    alice.notify_answer = None
    resp, d = await alice.subscribe(BOB)
    assert resp.code == 200
    ns = await alice.dialog_notifies(d, 2)  # Timer E retransmits the unanswered NOTIFY
    assert len({cseq_num(n) for n in ns}) == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while await subscriptions(node):
        assert loop.time() - t0 < 3.0, "Timer F (64*T1 = 1.28 s) should have removed it"
        await asyncio.sleep(0.1)
    count = len(alice.notifies_for(d))
    alice.notify_answer = 200
    assert (await bob.publish(pidf("bob"))).code == 200
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == count


# -- S27 -------------------------------------------------------------------------


async def test_s27_presence_subscription_is_active_at_once(make_client):
    """D4: no watcher approval, so never ``pending``."""
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob"))).code == 200
    for event in ("presence", "dialog"):
        alice = await make_client("alice")
        _, d = await alice.subscribe(BOB, event=event)
        [n] = await alice.dialog_notifies(d, 1)
        assert sub_state(n)[0] == "active"


async def test_s27_winfo_by_someone_else_gets_403(node, make_client):
    before = await snapshot(node)
    mallory = await make_client("mallory")
    resp, _ = await mallory.subscribe(BOB, event="presence.winfo")
    assert resp.code == 403
    await mallory.round_trip()
    assert mallory.notifies == []
    assert await snapshot(node) == before
    bob = await make_client("bob")
    resp, d = await bob.subscribe(BOB, event="presence.winfo")
    assert resp.code == 200
    [n] = await bob.dialog_notifies(d, 1)
    assert sub_state(n)[0] == "active"


# -- S28 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event,accept,ctype",
    [
        ("presence", None, "application/pidf+xml"),
        ("presence", "application/pidf+xml", "application/pidf+xml"),
        ("presence", "application/xpidf+xml, application/pidf+xml", "application/pidf+xml"),
        ("presence", "Application/PIDF+XML;q=0.5", "application/pidf+xml"),
        ("presence", "*/*", "application/pidf+xml"),
        ("dialog", None, "application/dialog-info+xml"),
        ("dialog", "application/*", "application/dialog-info+xml"),
        ("presence.winfo", None, "application/watcherinfo+xml"),
    ],
)
async def test_s28_notify_body_type_from_accept(make_client, event, accept, ctype):
    c = await make_client("bob")
    resp, d = await c.subscribe(BOB, event=event, accept=accept)
    assert resp.code == 200
    [n] = await c.dialog_notifies(d, 1)
    assert n.headers.get("content-type") == ctype
    assert n.body


@pytest.mark.parametrize(
    "event,accept",
    [("presence", "text/plain"), ("presence", "application/xpidf+xml"), ("dialog", "application/pidf+xml"),
     ("presence.winfo", "application/pidf+xml")],
)
async def test_s28_unacceptable_accept_gets_406(node, make_client, event, accept):
    c = await make_client("bob")
    before = await snapshot(node)
    resp, _ = await c.subscribe(BOB, event=event, accept=accept)
    assert resp.code == 406
    assert resp.headers.get("accept")
    await c.round_trip()
    assert c.notifies == []
    assert await snapshot(node) == before


# -- S29 -------------------------------------------------------------------------


async def test_s29_allow_events_lists_every_package_and_no_template(make_client):
    c = await make_client("bob")
    resp = await c.request(c.build("OPTIONS", BOB))
    events = [e.strip() for e in resp.headers.values("allow-events")]
    assert "winfo" not in events  # a template package is never listed alone
    assert events, "OPTIONS should list the packages"
    # Every listed package really is served: a SUBSCRIBE for it is accepted
    # and its NOTIFY names it.
    for event in events:
        r, d = await c.subscribe(BOB, event=event)
        assert r.code == 200, event
        [n] = await c.dialog_notifies(d, 1)
        assert n.headers.get("event") == event


# -- S32 -------------------------------------------------------------------------


async def test_s32_contact_expires_param_is_ignored_for_subscribe(node, make_client):
    c = await make_client("alice")
    contact = f"<{c.contact}>;expires=3600"
    data = raw_request(c, "SUBSCRIBE", BOB, ["Event: presence", "Expires: 120"])
    data = data.replace(f"Contact: <{c.contact}>".encode(), f"Contact: {contact}".encode())
    resp = await c.request(data)
    assert resp.code == 200 and resp.headers.get("expires") == "120"
    [sub] = await subscriptions(node)
    assert sub.expires_at - time.time() <= 121
    # And the other way round: a short Contact expires does not shorten it.
    data = raw_request(c, "SUBSCRIBE", BOB, ["Event: presence", "Expires: 600"])
    data = data.replace(f"Contact: <{c.contact}>".encode(), f"Contact: <{c.contact}>;expires=0".encode())
    resp = await c.request(data)
    assert resp.code == 200 and resp.headers.get("expires") == "600"
    assert len(await subscriptions(node)) == 2


async def test_s32_contact_expires_param_is_ignored_for_publish(node, make_client, clock):
    c = await make_client("bob")
    resp = await c.publish(pidf("bob"), expires=600, extra=[("Contact", f"<{c.contact}>;expires=1")])
    assert resp.code == 200 and resp.headers.get("expires") == "600"
    await expire(node, clock, 1.5)  # an expiry sweep past the Contact's 1 s
    [pub] = await publications(node, "bob@example.com")
    assert pub.expires_at - clock() > 590


# -- other negative cases of section B -------------------------------------------


async def test_subscribe_for_unserved_domain_gets_404(make_node, make_client):
    node = await make_node(domains=["example.com"])
    c = await make_client("alice", target=node)
    resp, _ = await c.subscribe("sip:bob@elsewhere.org")
    assert resp.code == 404
    resp, _ = await c.subscribe(BOB)
    assert resp.code == 200
    assert [s.presentity for s in await subscriptions(node)] == ["bob@example.com"]


async def test_subscribe_unsupported_uri_scheme_gets_416(node, make_client):
    c = await make_client("alice")
    resp, _ = await c.subscribe("tel:+15551234567")
    assert resp.code == 416
    assert await subscriptions(node) == []


async def test_subscribes_are_keyed_on_canonical_aor(node, make_client):
    """D2: port, parameters and sips: do not make a different presentity."""
    c = await make_client("alice")
    for uri in ("sip:bob@example.com:5060", "sips:bob@example.com", "sip:bob@EXAMPLE.com;transport=udp"):
        resp, _ = await c.subscribe(uri)
        assert resp.code == 200, uri
    assert {s.presentity for s in await subscriptions(node)} == {"bob@example.com"}


async def test_in_dialog_subscribe_for_expired_subscription_gets_481(node, make_client, clock):
    c = await make_client("alice")
    _, d = await c.subscribe(BOB, expires=1)
    await c.dialog_notifies(d, 1)
    await expire(node, clock, 1.1)
    await c.dialog_notifies(d, 2)  # initial + terminated(timeout)
    assert (await c.resubscribe(d, 600)).code == 481
    assert await subscriptions(node) == []


async def test_subscribe_bad_expires_gets_400(node, make_client):
    c = await make_client("alice")
    for bad in ("-1", "1.5", "abc", "99999999999"):
        resp = await c.request(raw_request(c, "SUBSCRIBE", BOB, ["Event: presence", f"Expires: {bad}"]))
        assert resp.code == 400, bad
    assert await subscriptions(node) == []
    await c.round_trip()
    assert c.notifies == []


async def test_two_watchers_each_get_their_own_dialog(node, make_client):
    bob = await make_client("bob")
    a1 = await make_client("alice")
    a2 = await make_client("carol")
    _, d1 = await a1.subscribe(BOB)
    _, d2 = await a2.subscribe(BOB)
    assert d1.to_tag != d2.to_tag
    await a1.dialog_notifies(d1, 1)
    await a2.dialog_notifies(d2, 1)
    assert (await bob.publish(pidf("bob", note="x"))).code == 200
    n1 = (await a1.dialog_notifies(d1, 2))[1]
    n2 = (await a2.dialog_notifies(d2, 2))[1]
    assert n1.body == n2.body == pidf("bob", note="x")
    assert tag(n1.headers.get("from")) == d1.to_tag and tag(n2.headers.get("from")) == d2.to_tag
    assert tag(n1.headers.get("to")) == d1.from_tag and tag(n2.headers.get("to")) == d2.from_tag
    assert {s.watcher for s in await subscriptions(node)} == {"alice@example.com", "carol@example.com"}


async def test_s30_s80_a_stopping_memory_node_ends_each_subscription_with_deactivated(make_node, make_client):
    """S30, S80: a node whose subscriptions die with it (memory storage)
    ends each with NOTIFY terminated;reason=deactivated on stop, so the
    subscribers re-subscribe at once instead of waiting for Expires."""
    from wire import sub_state

    node = await make_node()
    watchers = [await make_client(u, target=node) for u in ("alice", "carol")]
    dialogs = []
    for w in watchers:
        _, d = await w.subscribe("sip:bob@example.com")
        await w.dialog_notifies(d, 1)
        dialogs.append(d)
    await node.stop()
    for w, d in zip(watchers, dialogs):
        last = w.notifies_for(d)[-1]
        assert sub_state(last) == ("terminated", {"reason": "deactivated"})
        assert len(w.notifies_for(d)) == 2
