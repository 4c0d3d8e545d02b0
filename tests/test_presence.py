"""The presence package over real sockets (RFC 3856/3863/4479/4480: S49-S57,
D3 offline presentity, D8 invalid state)."""

from __future__ import annotations

import asyncio
import time
import uuid

from bodies import (
    NS, PIDF_TYPE, baresip_away, baresip_unknown, basics, cseq_no, etag_of, linphone, pidf, pjsua, publications, xml,
)
from sipclient import new_tag

BOB = "sip:bob@example.com"

BARESIP_AWAY = baresip_away("bob")
BARESIP_UNKNOWN = baresip_unknown("bob")
LINPHONE = linphone("bob")

# pjsua: tuple with deviceID, presence-level note, person and device.
PJSUA = pjsua("bob", basic="closed", tuple_id="t4109")


async def watch(make_client, user: str = "alice", uri: str = BOB, transport: str = "udp", **kw):
    w = await make_client(user, transport)
    resp, d = await w.subscribe(uri, **kw)
    assert resp.code == 200, f"{resp.code} {resp.reason}"
    await w.dialog_notifies(d, 1)
    return w, d


def last(notifies):
    return max(notifies, key=cseq_no)


def check_pidf(root, entity: str = BOB) -> None:
    """S51: root <presence> in the PIDF namespace for ``entity``, unique tuple
    ids, each tuple with <status>, every <basic> open or closed."""
    assert root.tag == "{urn:ietf:params:xml:ns:pidf}presence"
    assert root.get("entity") == entity
    tuples = root.findall("p:tuple", NS)
    assert tuples, "a PIDF document for a watcher needs a tuple"
    ids = [t.get("id") for t in tuples]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for t in tuples:
        assert t.find("p:status", NS) is not None
    assert set(basics(root)) <= {"open", "closed"}


# -- S49 canonical AOR ------------------------------------------------------------


async def test_s49_port_in_request_uri_is_the_same_presentity(make_client, node):
    bob = await make_client("bob")
    # linphone: port in the Request-URI but not in To/From.
    r = await bob.request(bob.build(
        "PUBLISH", "sip:bob@example.com:5070", [("Event", "presence"), ("Expires", "600"),
                                               ("Content-Type", PIDF_TYPE)],
        pidf(), to=BOB))
    assert r.code == 200
    [pub] = await publications(node)
    assert pub.presentity == "bob@example.com"
    alice = await make_client("alice")
    call_id = f"{uuid.uuid4().hex}@test"
    r = await alice.request(alice.build(
        "SUBSCRIBE", "sip:bob@example.com:5070;transport=udp", [("Event", "presence"), ("Expires", "600")],
        call_id=call_id, from_tag=new_tag(), to=BOB))
    assert r.code == 200
    [n] = await alice.wait_notifies(1, where=lambda m: m.headers.get("call-id") == call_id)
    assert basics(xml(n)) == ["open"]


async def test_s49_sips_and_sip_name_the_same_presentity(make_client, node):
    bob = await make_client("bob")
    etag_of(await bob.publish(pidf(basic="open"), uri="sips:bob@example.com"))
    alice, d = await watch(make_client, uri=BOB)
    assert basics(xml(alice.notifies_for(d)[0])) == ["open"]
    carol, d2 = await watch(make_client, "carol", uri="sips:bob@example.com")
    assert basics(xml(carol.notifies_for(d2)[0])) == ["open"]
    subs = await node.storage.list_subscriptions(time.time(), presentity="bob@example.com", watcher=None,
                                                 event="presence", offset=0, limit=10)
    assert {s.watcher for s in subs} == {"alice@example.com", "carol@example.com"}


# -- S50 content type ---------------------------------------------------------------


async def test_s50_pidf_without_accept_and_with_pjsua_accept(make_client):
    bob = await make_client("bob")
    etag_of(await bob.publish(pidf()))
    alice, d = await watch(make_client)
    assert alice.notifies_for(d)[0].headers.get("content-type") == PIDF_TYPE
    assert alice.notifies_for(d)[0].headers.get("event") == "presence"
    carol, d2 = await watch(make_client, "carol", accept="application/pidf+xml, application/xpidf+xml")
    assert carol.notifies_for(d2)[0].headers.get("content-type") == PIDF_TYPE


async def test_s50_accept_without_pidf_gets_406(make_client, node):
    alice = await make_client("alice")
    resp, _ = await alice.subscribe(BOB, accept="application/xpidf+xml")
    assert resp.code == 406
    assert PIDF_TYPE in (resp.headers.get("accept") or "")
    assert await node.storage.list_subscriptions(time.time(), presentity=None, watcher=None, event=None,
                                                 offset=0, limit=10) == []


# -- S51 valid PIDF, D8 invalid state -----------------------------------------------


async def test_s51_notify_pidf_is_valid(make_client):
    for client_body in (BARESIP_AWAY, LINPHONE, PJSUA):
        bob = await make_client("bob")
        tag = etag_of(await bob.publish(client_body))
        alice, d = await watch(make_client)
        check_pidf(xml(alice.notifies_for(d)[0]))
        assert (await bob.publish(None, etag=tag, expires=0)).code == 200


async def test_s51_entity_is_the_presentity_uri_whatever_the_publisher_wrote(make_client):
    # pjsua writes its local URI, which may hold an IP and port; a PUBLISH to
    # sips: or with a port names the same presentity (S49).
    for written in ("sip:bob@192.0.2.10:5060", "sips:bob@example.com", "pres:bob@example.com"):
        bob = await make_client("bob")
        body = BARESIP_AWAY.replace(b'entity="sip:bob@example.com"', f'entity="{written}"'.encode())
        tag = etag_of(await bob.publish(body))
        alice, d = await watch(make_client)
        n = alice.notifies_for(d)[0]
        root = xml(n)
        check_pidf(root)
        assert b"<rpid:away/>" in n.body  # foreign elements still byte for byte
        assert root.find("dm:person/rpid:activities/rpid:away", NS) is not None
        assert (await bob.publish(None, etag=tag, expires=0)).code == 200


async def test_s51_d8_basic_unknown_rejected_and_nothing_stored(make_client, node):
    bob = await make_client("bob")
    r = await bob.publish(BARESIP_UNKNOWN)
    assert r.code == 400
    assert "sip-etag" not in r.headers
    assert await publications(node) == []
    alice, d = await watch(make_client)
    n = alice.notifies_for(d)[0]
    assert b"unknown" not in n.body
    assert basics(xml(n)) == ["closed"]


async def test_d8_invalid_modify_keeps_previous_state_and_notifies_nobody(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(BARESIP_AWAY))
    alice, d = await watch(make_client)
    for bad in (BARESIP_UNKNOWN, BARESIP_AWAY[:-30], b"not xml at all",
                b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com">'
                b'<tuple id="a"><status/></tuple><tuple id="a"><status/></tuple></presence>',
                b'<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a"><status/></tuple></presence>',
                b'<presence xmlns="urn:example:not-pidf" entity="sip:bob@example.com"/>'):
        r = await bob.publish(bad, etag=tag)
        assert r.code == 400, bad
    [pub] = await publications(node)
    assert pub.etag == tag and pub.body == BARESIP_AWAY
    # The etag still works: the refused modifies consumed nothing.
    assert (await bob.publish(None, etag=tag)).code == 200
    await alice.round_trip()
    assert len(alice.notifies_for(d)) == 1


# -- S52 / S54 foreign elements byte for byte ---------------------------------------


async def test_s52_single_publication_reaches_watchers_byte_for_byte(make_client):
    for client_body in (BARESIP_AWAY, LINPHONE, PJSUA):
        bob = await make_client("bob")
        tag = etag_of(await bob.publish(client_body))
        alice, d = await watch(make_client)
        n = alice.notifies_for(d)[0]
        assert n.body == client_body
        root = xml(n)
        assert root.find("p:tuple", NS) is not None
        assert (await bob.publish(None, etag=tag, expires=0)).code == 200


async def test_s52_linphone_pidfonline_and_person_preserved(make_client):
    bob = await make_client("bob")
    etag_of(await bob.publish(LINPHONE))
    alice, d = await watch(make_client)
    root = xml(alice.notifies_for(d)[0])
    assert root.find("p:tuple/p:status/lo:online", NS) is not None
    assert root.find("dm:person/rpid:activities/rpid:on-the-phone", NS) is not None
    assert root.findtext("dm:person/dm:note", namespaces=NS) == "Café"


async def test_s52_s54_foreign_elements_survive_composition(make_client):
    baresip = await make_client("bob")
    pjsua = await make_client("bob")
    etag_of(await baresip.publish(BARESIP_AWAY))
    etag_of(await pjsua.publish(LINPHONE))
    alice, d = await watch(make_client)
    n = alice.notifies_for(d)[0]
    root = xml(n)
    check_pidf(root)
    # Elements in their namespaces, and the literal prefixes baresip and
    # linphone match (S54).
    assert root.find("p:tuple/p:status/lo:online", NS) is not None
    assert b"<pidfonline:online/>" in n.body
    assert b'<contact>sip:bob@192.0.2.10:5060</contact>' in n.body


async def test_s54_rpid_activities_reach_watchers_literally(make_client):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(BARESIP_AWAY))
    alice, d = await watch(make_client)
    assert b"<rpid:away/>" in alice.notifies_for(d)[0].body
    for activity in ("busy", "on-the-phone"):
        body = BARESIP_AWAY.replace(b"<rpid:away/>", f"<rpid:{activity}/>".encode())
        tag = etag_of(await bob.publish(body, etag=tag))
        await alice.wait_notifies(1, where=lambda m, a=activity: m.headers.get("call-id") == d.call_id
                                  and f"<rpid:{a}/>".encode() in m.body)
        n = last(alice.notifies_for(d))
        assert f"<rpid:{activity}/>".encode() in n.body
        assert xml(n).find(f"dm:person/rpid:activities/rpid:{activity}", NS) is not None


# -- S53 composition ----------------------------------------------------------------


async def test_s53_two_publications_compose_into_one_document(make_client, node):
    desk = await make_client("bob")
    soft = await make_client("bob")
    # Both devices use tuple id "t4109" and each has a person: the node must
    # keep ids unique and report one person.
    t_desk = etag_of(await desk.publish(BARESIP_AWAY))
    etag_of(await soft.publish(PJSUA))
    alice, d = await watch(make_client)
    root = xml(alice.notifies_for(d)[0])
    check_pidf(root)
    tuples = root.findall("p:tuple", NS)
    assert len(tuples) == 2
    assert sorted(basics(root)) == ["closed", "open"]
    assert len(root.findall("dm:person", NS)) <= 1
    all_ids = [e.get("id") for e in root.iter() if e.get("id") is not None]
    assert len(set(all_ids)) == len(all_ids), all_ids
    # Removing the desk phone's publication removes only its tuple.
    assert (await desk.publish(None, etag=t_desk, expires=0)).code == 200
    [_, n] = await alice.dialog_notifies(d, 2)
    root = xml(n)
    check_pidf(root)
    assert basics(root) == ["closed"]
    assert root.findtext("p:tuple/p:note", namespaces=NS) == "Idle"
    assert root.find("p:tuple/p:contact", NS) is None
    [left] = await publications(node)
    assert left.body == PJSUA


async def test_s53_every_watcher_gets_the_same_composed_document(make_client):
    for i, state in enumerate(("open", "closed", "open")):
        c = await make_client("bob")
        etag_of(await c.publish(pidf(basic=state, tuple_id=f"dev{i}")))
    bodies = []
    for user, transport in (("alice", "udp"), ("carol", "tcp")):
        w, d = await watch(make_client, user, transport=transport)
        bodies.append(w.notifies_for(d)[0].body)
    assert bodies[0] == bodies[1]
    root = xml(w.notifies_for(d)[0])
    assert sorted(t.get("id") for t in root.findall("p:tuple", NS)) == ["dev0", "dev1", "dev2"]


# -- S55 / D3 offline -----------------------------------------------------------


async def test_s55_d3_offline_presentity_gets_closed_pidf(make_client):
    alice = await make_client("alice")
    resp, d = await alice.subscribe("sip:nobody@example.com")
    assert resp.code == 200
    [n] = await alice.dialog_notifies(d, 1)
    assert n.headers.get("content-type") == PIDF_TYPE
    root = xml(n)
    check_pidf(root, "sip:nobody@example.com")
    assert basics(root) == ["closed"]
    assert len(root.findall("p:tuple", NS)) == 1


# -- S56 rate control, S57 fan-out --------------------------------------------------


async def burst(bob, n: int = 10) -> bytes:
    tag = etag_of(await bob.publish(pidf(note="state 0")))
    for i in range(1, n):
        tag = etag_of(await bob.publish(pidf(note=f"state {i}", basic="closed" if i % 2 else "open"), etag=tag))
    return f"<note>state {n - 1}</note>".encode()


async def ends_on(w, d, final: bytes, settle: float | None) -> list:
    """``settle``: how long a NOTIFY may still wait on a timer (None: none
    does, and a round trip ends the wait)."""
    await w.wait_notifies(1, timeout=4.0, where=lambda m: m.headers.get("call-id") == d.call_id and final in m.body)
    # nothing older may follow
    if settle is None:
        await w.round_trip()
    else:
        await asyncio.sleep(settle)
    got = w.notifies_for(d)
    assert final in last(got).body
    assert final in got[-1].body
    return got


async def test_s56_burst_of_publishes_every_watcher_ends_on_final_state(make_client):
    watchers = [await watch(make_client, u, transport=t) for u, t in (("alice", "udp"), ("carol", "tcp"))]
    bob = await make_client("bob")
    final = await burst(bob)
    for w, d in watchers:
        await ends_on(w, d, final, None)


async def test_s56_min_interval_merges_but_last_state_arrives(make_node, make_client):
    n = await make_node(notify={"min_interval": 1.0, "t1": 0.1, "t2": 0.4})
    watchers = []
    for u, t in (("alice", "udp"), ("carol", "tcp")):
        w = await make_client(u, t, target=n)
        resp, d = await w.subscribe(BOB)
        assert resp.code == 200
        await w.dialog_notifies(d, 1)
        watchers.append((w, d))
    bob = await make_client("bob", target=n)
    final = await burst(bob, 10)
    for w, d in watchers:
        got = await ends_on(w, d, final, 1.2)
        # 1 initial + 10 changes would be 11; merged, there are far fewer.
        assert len(got) <= 3, len(got)


async def test_d7_unsubscribe_while_a_change_waits_out_min_interval_gets_final_notify(make_node, make_client):
    # Regression: the final NOTIFY was lost (and the drain on stop hung) when
    # a subscription ended while a merged change waited for min_interval.
    n = await make_node(notify={"min_interval": 1.0, "t1": 0.1, "t2": 0.4})
    bob = await make_client("bob", target=n)
    tag = etag_of(await bob.publish(pidf(basic="open")))
    alice = await make_client("alice", target=n)
    resp, d = await alice.subscribe(BOB)
    assert resp.code == 200
    await alice.dialog_notifies(d, 1)
    etag_of(await bob.publish(pidf(basic="closed"), etag=tag))  # deferred by min_interval
    assert (await alice.resubscribe(d, 0)).code == 200
    got = await alice.dialog_notifies(d, 2, timeout=3.0)
    final = last(got)
    assert final.headers.get("subscription-state") == "terminated;reason=timeout"
    assert basics(xml(final)) == ["closed"]
    await asyncio.sleep(1.2)
    assert len(alice.notifies_for(d)) == 2, "nothing may follow the terminated NOTIFY"
    assert n.notifier.in_flight == 0


async def test_s57_every_watcher_gets_the_change_within_2s(make_client):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(basic="closed")))
    watchers = [await watch(make_client, f"w{i}", transport="tcp" if i % 2 else "udp") for i in range(6)]
    t0 = time.monotonic()
    etag_of(await bob.publish(pidf(basic="open", note="changed"), etag=tag))
    await asyncio.gather(*(w.wait_notifies(1, timeout=2.0, where=lambda m, d=d: m.headers.get("call-id") == d.call_id
                                           and b"changed" in m.body) for w, d in watchers))
    assert time.monotonic() - t0 < 2.0
    for w, d in watchers:
        assert basics(xml(last(w.notifies_for(d)))) == ["open"]
