"""Hostile XML in PUBLISH bodies, for every package that takes XML
(presence, dialog, dialog;sla): entity expansion bombs and external entities
get 400, nothing is stored, no watcher is told, and the node keeps serving."""

from __future__ import annotations

import pytest

from bodies import DIALOG_TYPE, PIDF_TYPE, dialog, dialog_info, etag_of, pidf, publications, xml

BOB = "sip:bob@example.com"
PASSWD = "/etc/passwd"

LAUGHS = "".join(
    f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' if i else '<!ENTITY lol0 "lol">' for i in range(10)
)

# (root element, inside the root) per package.
ROOTS = {
    "presence": ('presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com"',
                 '<tuple id="t1"><status><basic>open</basic></status><note>{ref}</note></tuple>', "presence"),
    "dialog": ('dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" '
               'entity="sip:bob@example.com"',
               '<dialog id="d1"><state>confirmed</state><local><identity>{ref}</identity></local></dialog>',
               "dialog-info"),
}
ROOTS["dialog;sla"] = ROOTS["dialog"]


def hostile(event: str, kind: str) -> bytes:
    open_tag, inner, name = ROOTS[event]
    if kind == "billion-laughs":
        dtd, ref = f"<!DOCTYPE {name} [{LAUGHS}]>", "&lol9;"
    elif kind == "quadratic":
        dtd, ref = f'<!DOCTYPE {name} [<!ENTITY a "{"x" * 50000}">]>', "&a;" * 1000
    elif kind == "xxe-file":
        dtd, ref = f'<!DOCTYPE {name} [<!ENTITY xxe SYSTEM "file://{PASSWD}">]>', "&xxe;"
    elif kind == "xxe-parameter":
        dtd, ref = f'<!DOCTYPE {name} [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]>', "x"
    elif kind == "external-dtd":
        dtd, ref = f'<!DOCTYPE {name} SYSTEM "file://{PASSWD}">', "x"
    elif kind == "utf16-doctype":
        text = (f'<?xml version="1.0" encoding="UTF-16"?>'
                f'<!DOCTYPE {name} [<!ENTITY xxe SYSTEM "file://{PASSWD}">]>'
                f"<{open_tag}>{inner.format(ref='&xxe;')}</{name}>")
        return text.encode("utf-16")
    else:
        raise AssertionError(kind)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{dtd}\n<{open_tag}>{inner.format(ref=ref)}</{name}>'.encode()


def valid(event: str) -> bytes:
    return pidf() if event == "presence" else dialog_info(BOB, dialog("d1"))


CTYPES = {"presence": PIDF_TYPE, "dialog": DIALOG_TYPE, "dialog;sla": DIALOG_TYPE}
KINDS = ["billion-laughs", "quadratic", "xxe-file", "xxe-parameter", "external-dtd", "utf16-doctype"]


@pytest.mark.parametrize("event", list(CTYPES))
async def test_hostile_initial_publish_gets_400_and_nothing_stored(make_client, node, event):
    bob = await make_client("bob", "tcp")  # TCP: the quadratic body is larger than a datagram
    for kind in KINDS:
        r = await bob.publish(hostile(event, kind), event=event, ctype=CTYPES[event])
        assert r.code == 400, (kind, r.code, r.reason)
        assert "sip-etag" not in r.headers
    assert await publications(node) == []
    # The node is unharmed and still takes a valid body.
    assert (await bob.publish(valid(event), event=event, ctype=CTYPES[event])).code == 200


@pytest.mark.parametrize("event", list(CTYPES))
async def test_hostile_modify_keeps_state_and_notifies_nobody(make_client, node, event):
    bob = await make_client("bob", "tcp")
    tag = etag_of(await bob.publish(valid(event), event=event, ctype=CTYPES[event]))
    alice = await make_client("alice")
    resp, d = await alice.subscribe(BOB, event=event)
    assert resp.code == 200
    [first] = await alice.dialog_notifies(d, 1)
    for kind in KINDS:
        r = await bob.publish(hostile(event, kind), etag=tag, event=event, ctype=CTYPES[event])
        assert r.code == 400, kind
    [pub] = await publications(node)
    assert pub.etag == tag and pub.body == valid(event)
    await alice.round_trip()
    assert alice.notifies_for(d) == [first]
    assert b"root:" not in first.body and b"lol" not in first.body


async def test_xinclude_is_passed_on_not_followed(make_client):
    body = pidf().replace(
        b"</tuple>",
        b'</tuple><x xmlns:xi="http://www.w3.org/2001/XInclude" xmlns="urn:example:x">'
        b'<xi:include href="file:///etc/passwd" parse="text"/></x>',
    )
    bob = await make_client("bob")
    etag_of(await bob.publish(body))
    alice = await make_client("alice")
    resp, d = await alice.subscribe(BOB)
    assert resp.code == 200
    [n] = await alice.dialog_notifies(d, 1)
    root = xml(n)
    assert root.find(".//{http://www.w3.org/2001/XInclude}include") is not None
    assert b"root:" not in n.body
