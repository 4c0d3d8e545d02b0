"""The dialog package for BLF and shared lines over real sockets (RFC 4235:
S64-S72).

Notes on statements without a test of their own here:

* S69 (a single "virtual" dialog without identifiers for subscribers
  without specific authorisation): by decision D4 every ``dialog``
  subscription is authorised, so subscribers get the real dialogs with their
  identifiers (checked in ``test_s68_...``); no virtual-dialog mode exists.
* S70 (at most one NOTIFY per second per subscriber, RECOMMENDED): the rate
  is the D7 ``notify.min_interval`` setting, default 0; ``test_s70_...``
  checks that with ``min_interval: 1.0`` a burst is merged and the last
  state still arrives.
* S73 (the server subscribing to the phones of a shared AOR, ``pua_bla``
  style) is out of scope by D9, and S74 (RFC 7463 ``dialog;shared``
  appearance agent) is not offered: neither is tested.
"""

from __future__ import annotations

import asyncio
import time

from bodies import DIALOG_TYPE, NS, cseq_no, dialog, dialog_info, etag_of, publications, xml

BOB = "sip:bob@example.com"
SHARED = "sip:shared@example.com"
DI = "{urn:ietf:params:xml:ns:dialog-info}"
STATES = {"trying", "proceeding", "early", "confirmed", "terminated"}


async def blf(make_client, user: str = "alice", uri: str = BOB, event: str = "dialog", transport: str = "udp", **kw):
    w = await make_client(user, transport)
    resp, d = await w.subscribe(uri, event=event, **kw)
    assert resp.code == 200, f"{resp.code} {resp.reason}"
    await w.dialog_notifies(d, 1)
    return w, d


def ordered(client, d):
    return sorted(client.notifies_for(d), key=cseq_no)


def check_doc(root, entity: str = BOB):
    """S67/S68: the root's mandatory attributes; each dialog's id and state."""
    assert root.tag == f"{DI}dialog-info"
    assert root.get("state") == "full"
    assert root.get("entity") == entity
    v = int(root.get("version"))
    assert 0 <= v < 2**32
    dialogs = root.findall("d:dialog", NS)
    ids = [x.get("id") for x in dialogs]
    assert all(ids) and len(set(ids)) == len(ids)
    for x in dialogs:
        assert x.findtext("d:state", namespaces=NS) in STATES
    return dialogs


def ids_of(msg) -> list[str]:
    return sorted(x.get("id") for x in xml(msg).findall("d:dialog", NS))


async def test_s64_dialog_supported_with_dialog_info_body(make_client):
    alice, d = await blf(make_client)
    [n] = alice.notifies_for(d)
    assert n.headers.get("event") == "dialog"
    assert n.headers.get("content-type") == DIALOG_TYPE
    check_doc(xml(n))
    carol, d2 = await blf(make_client, "carol", accept=f"{DIALOG_TYPE}, application/pidf+xml")
    assert carol.notifies_for(d2)[0].headers.get("content-type") == DIALOG_TYPE


async def test_s64_accept_without_dialog_info_gets_406(make_client):
    alice = await make_client("alice")
    resp, _ = await alice.subscribe(BOB, event="dialog", accept="application/pidf+xml")
    assert resp.code == 406
    assert DIALOG_TYPE in (resp.headers.get("accept") or "")


async def test_s65_call_id_and_tag_filters(make_client):
    bob = await make_client("bob")
    body = dialog_info(
        BOB,
        dialog("d1", call_id="c1@192.0.2.1", local_tag="L1", remote_tag="R1", direction="initiator"),
        dialog("d2", call_id="c2@192.0.2.1", local_tag="L2", remote_tag="R2", direction="recipient"),
        dialog("d3", "early", call_id="c3@192.0.2.1", local_tag="L3"),
    )
    etag_of(await bob.publish(body, event="dialog", ctype=DIALOG_TYPE))
    cases = {
        "": ["d1", "d2", "d3"],
        ';call-id="c1@192.0.2.1"': ["d1"],
        ';call-id="c1@192.0.2.1";from-tag=L1': ["d1"],
        ';call-id="c1@192.0.2.1";from-tag=R1': [],  # d1 is ours: its From tag is L1
        ";to-tag=L2": ["d2"],  # recipient: the INVITE's To tag is our local tag
        ";from-tag=L3": ["d3"],  # no direction: either orientation
        ';call-id="nope@x"': [],
    }
    for i, (params, want) in enumerate(cases.items()):
        w, d = await blf(make_client, f"w{i}", event=f"dialog{params}")
        n = w.notifies_for(d)[0]
        assert n.headers.get("event") == "dialog"
        check_doc(xml(n))
        assert ids_of(n) == want, params


async def test_s65_include_session_description(make_client):
    bob = await make_client("bob")
    sdp = '<local><identity>sip:bob@example.com</identity><session-description type="application/sdp">v=0</session-description></local>'
    etag_of(await bob.publish(dialog_info(BOB, dialog("d1", inner=sdp)), event="dialog", ctype=DIALOG_TYPE))
    plain, d1 = await blf(make_client, "alice")
    full, d2 = await blf(make_client, "carol", event="dialog;include-session-description")
    r_plain, r_full = xml(plain.notifies_for(d1)[0]), xml(full.notifies_for(d2)[0])
    assert r_plain.find("d:dialog/d:local/d:session-description", NS) is None
    assert r_plain.findtext("d:dialog/d:local/d:identity", namespaces=NS) == "sip:bob@example.com"
    assert r_full.findtext("d:dialog/d:local/d:session-description", namespaces=NS) == "v=0"


async def test_s66_s67_full_document_version_from_0(make_client):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(dialog_info(BOB, dialog("d1", "early")), event="dialog", ctype=DIALOG_TYPE))
    alice, d = await blf(make_client)
    tag = etag_of(await bob.publish(dialog_info(BOB, dialog("d1", "confirmed")), etag=tag, event="dialog",
                                    ctype=DIALOG_TYPE))
    await alice.dialog_notifies(d, 2)
    tag = etag_of(await bob.publish(dialog_info(BOB, dialog("d1", "terminated")), etag=tag, event="dialog",
                                    ctype=DIALOG_TYPE))
    await alice.dialog_notifies(d, 3)
    assert (await alice.resubscribe(d, 600)).code == 200
    await alice.dialog_notifies(d, 4)
    docs = [xml(n) for n in ordered(alice, d)]
    for root in docs:
        [x] = check_doc(root)
        assert x.get("id") == "d1"
    assert [int(r.get("version")) for r in docs] == [0, 1, 2, 3]
    assert [r.findtext("d:dialog/d:state", namespaces=NS) for r in docs] == [
        "early", "confirmed", "terminated", "terminated"]
    # Scoped to the subscription: a new subscriber starts at 0.
    carol, d2 = await blf(make_client, "carol")
    assert xml(carol.notifies_for(d2)[0]).get("version") == "0"


async def test_s67_d3_idle_user_gets_full_document_without_dialog(make_client):
    alice, d = await blf(make_client, uri="sip:idle@example.com")
    [n] = alice.notifies_for(d)
    root = xml(n)
    assert check_doc(root, "sip:idle@example.com") == []
    assert root.get("version") == "0"


async def test_s67_removed_publication_leaves_document_without_dialog(make_client, node):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(dialog_info(BOB, dialog("d1")), event="dialog", ctype=DIALOG_TYPE))
    alice, d = await blf(make_client)
    assert ids_of(alice.notifies_for(d)[0]) == ["d1"]
    assert (await bob.publish(None, etag=tag, event="dialog", expires=0)).code == 200
    await alice.dialog_notifies(d, 2)
    assert check_doc(xml(ordered(alice, d)[1])) == []
    assert await publications(node, "dialog") == []


async def test_s68_dialog_attributes_and_state_kept(make_client):
    bob = await make_client("bob")
    inner = ('<duration>42</duration><local><identity>sip:bob@example.com</identity></local>'
             '<remote><identity display="Carol">sip:carol@example.com</identity></remote>')
    body = dialog_info(
        BOB,
        dialog("d1", "terminated", call_id="c1@192.0.2.1", local_tag="lt1", remote_tag="rt1",
               direction="recipient", state_event="rejected", code=486, inner=inner),
        dialog("d2", "confirmed", call_id="c2@192.0.2.1", local_tag="lt2", direction="initiator"),
    )
    etag_of(await bob.publish(body, event="dialog", ctype=DIALOG_TYPE))
    alice, d = await blf(make_client)
    dialogs = {x.get("id"): x for x in check_doc(xml(alice.notifies_for(d)[0]))}
    d1 = dialogs["d1"]
    assert (d1.get("call-id"), d1.get("local-tag"), d1.get("remote-tag"), d1.get("direction")) == (
        "c1@192.0.2.1", "lt1", "rt1", "recipient")
    st = d1.find("d:state", NS)
    assert (st.text, st.get("event"), st.get("code")) == ("terminated", "rejected", "486")
    assert d1.findtext("d:duration", namespaces=NS) == "42"
    assert d1.find("d:remote/d:identity", NS).get("display") == "Carol"
    assert dialogs["d2"].get("direction") == "initiator"
    assert dialogs["d2"].get("remote-tag") is None


async def test_s68_invalid_dialog_publication_rejected(make_client, node):
    bob = await make_client("bob")
    bad_bodies = [
        dialog_info(BOB, dialog("d1", " ")),  # empty state
        dialog_info(BOB, "<dialog><state>confirmed</state></dialog>"),  # no id
        dialog_info(BOB, dialog("d1"), dialog("d1", "early")),  # id not unique
        dialog_info(BOB, '<dialog id="d1"/>'),  # no state
        b'<dialog-info xmlns="urn:example:other" version="0" state="full" entity="sip:bob@example.com"/>',
        b"<dialog-info",
    ]
    for body in bad_bodies:
        r = await bob.publish(body, event="dialog", ctype=DIALOG_TYPE)
        assert r.code == 400, body
    assert await publications(node) == []


async def test_s68_unknown_state_reaches_watchers(make_client, node):
    """A state outside RFC 4235's five (its schema allows any string; #17.5)
    is stored and sent on, not refused with 400."""
    bob = await make_client("bob")
    etag_of(await bob.publish(dialog_info(BOB, dialog("d1", "ringing")), event="dialog", ctype=DIALOG_TYPE))
    alice, d = await blf(make_client)
    assert xml(alice.notifies_for(d)[0]).findtext("d:dialog/d:state", namespaces=NS) == "ringing"


async def test_d3_idle_placeholder_dialog_when_configured(make_node, make_client):
    """``dialog.idle_placeholder`` gives an idle BLF document one terminated
    ``<dialog>`` for the phones that expect one (#17.5); a real dialog replaces it."""
    n = await make_node(dialog={"idle_placeholder": True})
    alice = await make_client("alice", target=n)
    resp, d = await alice.subscribe(BOB, event="dialog")
    assert resp.code == 200
    await alice.dialog_notifies(d, 1)
    [idle] = check_doc(xml(alice.notifies_for(d)[0]))
    assert idle.findtext(f"{DI}state") == "terminated"
    bob = await make_client("bob", target=n)
    etag_of(await bob.publish(dialog_info(BOB, dialog("d1", "early")), event="dialog", ctype=DIALOG_TYPE))
    await alice.dialog_notifies(d, 2)
    assert ids_of(ordered(alice, d)[1]) == ["d1"]


async def test_s70_min_interval_limits_dialog_notify_rate(make_node, make_client):
    n = await make_node(notify={"min_interval": 1.0, "t1": 0.1, "t2": 0.4})
    alice = await make_client("alice", target=n)
    resp, d = await alice.subscribe(BOB, event="dialog")
    assert resp.code == 200
    await alice.dialog_notifies(d, 1)
    t0 = time.monotonic()
    bob = await make_client("bob", target=n)
    tag = None
    for state in ("trying", "proceeding", "early", "confirmed", "terminated"):
        r = await bob.publish(dialog_info(BOB, dialog("d1", state)), etag=tag, event="dialog", ctype=DIALOG_TYPE)
        tag = etag_of(r)
    await asyncio.sleep(max(0.0, 0.7 - (time.monotonic() - t0)))
    assert len(alice.notifies_for(d)) == 1, "a NOTIFY came sooner than min_interval"
    await alice.wait_notifies(1, timeout=3.0, where=lambda m: m.headers.get("call-id") == d.call_id
                              and b">terminated</state>" in m.body)
    await asyncio.sleep(0.3)
    got = ordered(alice, d)
    assert len(got) == 2
    assert xml(got[-1]).findtext("d:dialog/d:state", namespaces=NS) == "terminated"
    assert [xml(m).get("version") for m in got] == ["0", "1"]


async def test_s71_publish_dialog_notifies_blf_watchers(make_client, node):
    watchers = [await blf(make_client, u, transport=t) for u, t in (("alice", "udp"), ("carol", "tcp"))]
    for w, d in watchers:
        assert check_doc(xml(w.notifies_for(d)[0])) == []
    desk = await make_client("bob")
    soft = await make_client("bob")
    t_desk = etag_of(await desk.publish(dialog_info(BOB, dialog("desk-1", "confirmed")), event="dialog",
                                        ctype=DIALOG_TYPE))
    etag_of(await soft.publish(dialog_info(BOB, dialog("soft-1", "early")), event="dialog", ctype=DIALOG_TYPE))
    for w, d in watchers:
        await w.wait_notifies(1, where=lambda m, d=d: m.headers.get("call-id") == d.call_id
                              and len(xml(m).findall("d:dialog", NS)) == 2)
    # The desk phone's call ends: watchers see the composed result.
    etag_of(await desk.publish(dialog_info(BOB, dialog("desk-1", "terminated", state_event="local-bye")),
                               etag=t_desk, event="dialog", ctype=DIALOG_TYPE))
    for w, d in watchers:
        await w.wait_notifies(1, where=lambda m, d=d: m.headers.get("call-id") == d.call_id
                              and b"local-bye" in m.body)
        dialogs = {x.get("id"): x for x in check_doc(xml(ordered(w, d)[-1]))}
        assert dialogs["desk-1"].findtext("d:state", namespaces=NS) == "terminated"
        assert dialogs["soft-1"].findtext("d:state", namespaces=NS) == "early"
    # Dialog state is not presence state: bob's presence stays offline.
    assert await publications(node, "presence") == []
    pw, pd = await blf(make_client, "dave", event="presence")
    assert pw.notifies_for(pd)[0].headers.get("content-type") == "application/pidf+xml"
    assert b"<basic>closed</basic>" in pw.notifies_for(pd)[0].body


async def test_s72_sla_gathers_every_phones_dialogs(make_client, node):
    phone1 = await make_client("shared")
    phone2 = await make_client("shared")
    etag_of(await phone1.publish(dialog_info(SHARED, dialog("p1-a", "confirmed", call_id="a@p1")),
                                 event="dialog;sla", uri=SHARED, ctype=DIALOG_TYPE))
    t2 = etag_of(await phone2.publish(dialog_info(SHARED, dialog("p2-a", "early", call_id="a@p2")),
                                      event="dialog;sla", uri=SHARED, ctype=DIALOG_TYPE))
    assert {p.event for p in await publications(node)} == {"dialog;sla"}
    sub, d = await blf(make_client, "phone3", uri=SHARED, event="dialog;sla")
    n = sub.notifies_for(d)[0]
    assert n.headers.get("event") == "dialog;sla"
    assert n.headers.get("content-type") == DIALOG_TYPE
    root = xml(n)
    check_doc(root, SHARED)
    assert ids_of(n) == ["p1-a", "p2-a"]
    # A change by one phone: one document, still both phones' dialogs.
    etag_of(await phone2.publish(dialog_info(SHARED, dialog("p2-a", "confirmed", call_id="a@p2")),
                                 etag=t2, event="dialog;sla", uri=SHARED, ctype=DIALOG_TYPE))
    await sub.dialog_notifies(d, 2)
    n = ordered(sub, d)[1]
    assert n.headers.get("event") == "dialog;sla"
    assert ids_of(n) == ["p1-a", "p2-a"]
    assert {x.findtext("d:state", namespaces=NS) for x in xml(n).findall("d:dialog", NS)} == {"confirmed"}
    # Refresh and unsubscribe with the same Event value keep working.
    assert (await sub.resubscribe(d, 600)).code == 200
    await sub.dialog_notifies(d, 3)
    assert (await sub.resubscribe(d, 0)).code == 200
    await sub.dialog_notifies(d, 4)
    final = ordered(sub, d)[3]
    assert final.headers.get("event") == "dialog;sla"
    assert final.headers.get("subscription-state") == "terminated;reason=timeout"
    assert [int(xml(m).get("version")) for m in ordered(sub, d)] == [0, 1, 2, 3]


async def test_s72_d3_idle_shared_line_gets_document_without_dialog(make_client):
    sub, d = await blf(make_client, "phone3", uri=SHARED, event="dialog;sla")
    n = sub.notifies_for(d)[0]
    assert n.headers.get("event") == "dialog;sla"
    assert check_doc(xml(n), SHARED) == []
