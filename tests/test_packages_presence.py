"""The presence package: PIDF checking and composition (D3, D8, S44, S50-S54)."""

from __future__ import annotations

import time

import pytest
from lxml import etree

from presence_node.packages.base import BadBody, UnsupportedBody
from presence_node.packages.presence import PresencePackage
from bodies import baresip_away, baresip_unknown, linphone, pjsua

PIDF = "urn:ietf:params:xml:ns:pidf"
DM = "urn:ietf:params:xml:ns:pidf:data-model"
RPID = "urn:ietf:params:xml:ns:pidf:rpid"
PIDFONLINE = "http://www.linphone.org/xsds/pidfonline.xsd"
NS = {"p": PIDF, "dm": DM, "rpid": RPID, "lo": PIDFONLINE}
ENTITY = "sip:alice@example.com"

BARESIP_AWAY = baresip_away("alice")
BARESIP_UNKNOWN = baresip_unknown("alice")
LINPHONE = linphone("alice")

# pjsua: desk phone with a device element and a presence-level note.
PJSUA = pjsua("alice", timestamp="2024-05-01T10:00:00.000Z")


@pytest.fixture
def pkg() -> PresencePackage:
    return PresencePackage()


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def test_s50_package_attributes(pkg: PresencePackage) -> None:
    assert pkg.name == "presence"
    assert pkg.content_types == ("application/pidf+xml",)
    assert pkg.publishable


@pytest.mark.parametrize("body", [BARESIP_AWAY, LINPHONE, PJSUA])
def test_s52_real_client_bodies_accepted_byte_faithful(pkg: PresencePackage, body: bytes) -> None:
    assert pkg.check_publication(body, "application/pidf+xml") is body
    assert pkg.check_publication(body, "Application/PIDF+XML; charset=UTF-8") is body


def test_d8_basic_unknown_rejected(pkg: PresencePackage) -> None:
    with pytest.raises(BadBody) as err:
        pkg.check_publication(BARESIP_UNKNOWN, "application/pidf+xml")
    assert err.value.status_hint == 400
    assert "unknown" in err.value.reason


def test_d8_not_wellformed_rejected(pkg: PresencePackage) -> None:
    with pytest.raises(BadBody) as err:
        pkg.check_publication(BARESIP_AWAY[:-20], "application/pidf+xml")
    assert err.value.status_hint == 400


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'<presence xmlns="urn:example:not-pidf" entity="sip:a@example.com"/>', "root"),
        (
            b'<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="t"><status/></tuple></presence>',
            "entity",
        ),
        (
            b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com">'
            b"<tuple><status><basic>open</basic></status></tuple></presence>",
            "without an id",
        ),
        (
            b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com">'
            b'<tuple id="t1"><contact>sip:a@example.com</contact></tuple></presence>',
            "no <status>",
        ),
        (
            b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com">'
            b'<tuple id="t1"><status><basic>open</basic></status></tuple>'
            b'<tuple id="t1"><status><basic>closed</basic></status></tuple></presence>',
            "not unique",
        ),
    ],
)
def test_s51_invalid_pidf_rejected(pkg: PresencePackage, body: bytes, why: str) -> None:
    with pytest.raises(BadBody) as err:
        pkg.check_publication(body, "application/pidf+xml")
    assert why in err.value.reason


def test_s44_wrong_content_type_is_415_with_accept(pkg: PresencePackage) -> None:
    for ctype in ("text/plain", "application/xpidf+xml", "application/dialog-info+xml"):
        with pytest.raises(UnsupportedBody) as err:
            pkg.check_publication(BARESIP_AWAY, ctype)
        assert err.value.status_hint == 415
        assert ("Accept", "application/pidf+xml") in err.value.headers


def test_d3_offline_document(pkg: PresencePackage) -> None:
    doc = pkg.compose('sip:bob&"co"@example.com', [])
    assert doc.content_type == "application/pidf+xml"
    root = parse(doc.render(7))
    assert root.tag == f"{{{PIDF}}}presence"
    assert root.get("entity") == 'sip:bob&"co"@example.com'
    tuples = root.findall("p:tuple", NS)
    assert len(tuples) == 1
    assert tuples[0].findtext("p:status/p:basic", namespaces=NS) == "closed"
    # Stable per entity, distinct between entities, and valid PIDF itself.
    assert pkg.compose('sip:bob&"co"@example.com', []).body == doc.body
    assert parse(pkg.compose(ENTITY, []).body).find("p:tuple", NS).get("id") != tuples[0].get("id")
    assert pkg.check_publication(doc.body, "application/pidf+xml") is doc.body


def test_s52_single_body_passed_on_byte_for_byte(pkg: PresencePackage) -> None:
    doc = pkg.compose(ENTITY, [LINPHONE])
    assert doc.render(0) == LINPHONE == doc.render(5)
    online = parse(doc.body).find("p:tuple/p:status/lo:online", NS)
    assert online is not None and online.prefix == "pidfonline"


def test_s53_composition_one_document_unique_tuple_ids(pkg: PresencePackage) -> None:
    # Desk phone (pjsua) then softphone (linphone) then baresip whose tuple id collides.
    clash = BARESIP_AWAY.replace(b'"t4109"', b'"qmtt3h"')
    doc = pkg.compose(ENTITY, [PJSUA, LINPHONE, clash])
    root = parse(doc.body)
    assert root.tag == f"{{{PIDF}}}presence" and root.get("entity") == ENTITY
    tuples = root.findall("p:tuple", NS)
    ids = [t.get("id") for t in tuples]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert ids[:2] == ["pj0a1b2c3", "qmtt3h"] and ids[2].startswith("qmtt3h-")
    assert all(t.find("p:status", NS) is not None for t in tuples)
    # Every xs:ID in the document is unique.
    all_ids = [e.get("id") for e in root if e.get("id") is not None]
    assert len(all_ids) == len(set(all_ids))
    # Exactly one person: the newest (baresip's, published last).
    persons = root.findall("dm:person", NS)
    assert [p.get("id") for p in persons] == ["p4159"]
    # The device and the presence-level note survive; PIDF order: tuples, notes, others.
    assert root.find("dm:device", NS).get("id") == "dev1"
    assert root.findtext("p:note", namespaces=NS) == "Desk phone"
    kinds = [etree.QName(e).localname for e in root]
    assert kinds == ["tuple", "tuple", "tuple", "note", "device", "person"]
    assert doc.version_at == -1


def test_s53_removing_a_publication_removes_only_its_tuples(pkg: PresencePackage) -> None:
    both = parse(pkg.compose(ENTITY, [PJSUA, LINPHONE]).body)
    assert {t.get("id") for t in both.findall("p:tuple", NS)} == {"pj0a1b2c3", "qmtt3h"}
    after = parse(pkg.compose(ENTITY, [PJSUA]).body)
    assert [t.get("id") for t in after.findall("p:tuple", NS)] == ["pj0a1b2c3"]


def test_s52_foreign_namespaces_preserved(pkg: PresencePackage) -> None:
    doc = pkg.compose(ENTITY, [PJSUA, LINPHONE])
    root = parse(doc.body)
    online = root.find("p:tuple/p:status/lo:online", NS)
    assert online is not None and online.prefix == "pidfonline"
    assert root.find("p:tuple/dm:deviceID", NS).text.startswith("urn:uuid:")
    assert root.findtext("dm:person/dm:note", namespaces=NS) == "Café"
    assert root.find("dm:person/rpid:activities/rpid:on-the-phone", NS) is not None
    # Declarations live on the root, not repeated on each copied element.
    assert doc.body.count(b'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"') == 1
    assert pkg.check_publication(doc.body, "application/pidf+xml") is doc.body


def test_s54_rpid_prefix_literal(pkg: PresencePackage) -> None:
    doc = pkg.compose(ENTITY, [PJSUA, BARESIP_AWAY])
    assert b"<rpid:away/>" in doc.body
    away = parse(doc.body).find("dm:person/rpid:activities/rpid:away", NS)
    assert away is not None and away.prefix == "rpid"
    # The older pjsua person is dropped, so its busy is not shown as well.
    assert b"rpid:busy" not in doc.body


def test_s54_other_prefixes_not_rewritten(pkg: PresencePackage) -> None:
    """A source binding RPID to another prefix keeps it (no re-prefixing)."""
    odd = (
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" '
        b'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:alice@example.com">'
        b'<tuple id="x1"><status><basic>closed</basic></status></tuple>'
        b'<dm:person id="px"><r:activities><r:busy/></r:activities></dm:person></presence>'
    )
    doc = pkg.compose(ENTITY, [BARESIP_AWAY, odd])
    assert b"<r:activities><r:busy/></r:activities>" in doc.body
    busy = parse(doc.body).find("dm:person/rpid:activities/rpid:busy", NS)
    assert busy is not None and busy.prefix == "r"


def test_s51_composed_non_utf8_source_stays_well_formed(pkg: PresencePackage) -> None:
    latin = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:alice@example.com">'
        '<tuple id="l1"><status><basic>open</basic></status><note>Réunion</note></tuple></presence>'
    ).encode("iso-8859-1")
    pkg.check_publication(latin, "application/pidf+xml")
    root = parse(pkg.compose(ENTITY, [latin, BARESIP_AWAY]).body)
    assert root.findtext("p:tuple/p:note", namespaces=NS) == "Réunion"


def one_tuple(tuple_id: str) -> bytes:
    return (
        f'<presence xmlns="{PIDF}" entity="{ENTITY}"><tuple id="{tuple_id}"><status><basic>open</basic>'
        f"</status></tuple></presence>"
    ).encode()


def compose_seconds(pkg: PresencePackage, bodies: list[bytes]) -> float:
    started = time.process_time()
    pkg.compose(ENTITY, bodies)
    return time.process_time() - started


def test_s53_thousands_of_one_tuple_id_renamed_in_linear_time(pkg: PresencePackage) -> None:
    """8,000 publications sharing a tuple id (issue #12 item 2): every id
    unique, numbered in order, and 4x the publications cost about 4x (a
    probe per element from ``-2`` upwards was quadratic: 16x)."""
    bodies = [one_tuple("t")] * 8000
    root = parse(pkg.compose(ENTITY, bodies).body)
    assert [t.get("id") for t in root] == ["t"] + [f"t-{n}" for n in range(2, 8001)]
    small = min(compose_seconds(pkg, bodies[:2000]) for _ in range(3))
    large = min(compose_seconds(pkg, bodies) for _ in range(3))
    assert large < 10 * small, f"2000: {small * 1000:.0f} ms, 8000: {large * 1000:.0f} ms"


def test_s53_renamed_ids_skip_ids_already_taken(pkg: PresencePackage) -> None:
    """A suffix another element already carries is skipped, later ids that
    collide with an earlier rename are renamed in turn."""
    bodies = [one_tuple(i) for i in ("a", "a-3", "a", "a", "a-2", "a")]
    root = parse(pkg.compose(ENTITY, bodies).body)
    assert [t.get("id") for t in root] == ["a", "a-3", "a-2", "a-4", "a-2-2", "a-5"]


def test_s53_composing_twice_gives_the_same_document(pkg: PresencePackage) -> None:
    """Composition works on trees parsed for it: nothing it changes (ids,
    serialisation marks) leaks into the next composition."""
    bodies = [PJSUA, LINPHONE, BARESIP_AWAY.replace(b'"t4109"', b'"qmtt3h"')]
    assert pkg.compose(ENTITY, bodies).body == pkg.compose(ENTITY, bodies).body


def test_s52_differing_bindings_repeated_only_on_elements_using_them(pkg: PresencePackage) -> None:
    """A later body binding many prefixes differently from the first keeps
    its bindings where they are used, and the document stays about the size
    of its sources (a binding was repeated on every element: prefixes x
    children)."""
    def body(uri: str, inner: str) -> bytes:
        decls = "".join(f' xmlns:p{i}="urn:{uri}:{i}"' for i in range(1, 128))
        return (f'<presence xmlns="{PIDF}"{decls} entity="{ENTITY}"><tuple id="{uri}"><status><basic>open'
                f"</basic></status></tuple>{inner}</presence>").encode()

    first, second = body("first", ""), body("second", "<p1:x/>" + "<e/>" * 1000)
    doc = pkg.compose(ENTITY, [first, second]).body
    assert len(doc) < len(first) + len(second)
    root = parse(doc)
    x = root.find("{urn:second:1}x")
    assert x is not None and x.prefix == "p1"
    assert len(root.findall("p:e", NS)) == 1000


# What composition produced before #12 (one serialisation per child), byte
# for byte: composing by cutting children out of one serialisation of each
# source must not change it.
COMPOSED_PJSUA_LINPHONE_BARESIP = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" xmlns:pidfonline="http://www.linphone.org/xsds/pidfonline.xsd" entity="sip:alice@example.com">\n'
    b'<tuple id="pj0a1b2c3">\n'
    b'  <status>\n'
    b'   <basic>open</basic>\n'
    b'  </status>\n'
    b'  <dm:deviceID>urn:uuid:d27459b7-8213-4395-aa77-ed859a3e5b3a</dm:deviceID>\n'
    b'  <timestamp>2024-05-01T10:00:00.000Z</timestamp>\n'
    b'  <note>Idle</note>\n'
    b' </tuple>\n'
    b'<tuple id="qmtt3h">\n'
    b'    <status>\n'
    b'      <basic>open</basic>\n'
    b'      <pidfonline:online/>\n'
    b'    </status>\n'
    b'    <contact>sip:alice@198.51.100.7:5062</contact>\n'
    b'    <timestamp>2024-05-01T10:00:00Z</timestamp>\n'
    b'  </tuple>\n'
    b'<tuple id="qmtt3h-2">\n'
    b'    <status>\n'
    b'      <basic>open</basic>\n'
    b'    </status>\n'
    b'    <contact>sip:alice@192.0.2.10:5060</contact>\n'
    b'  </tuple>\n'
    b'<note>Desk phone</note>\n'
    b'<dm:device id="dev1">\n'
    b'  <dm:deviceID>urn:uuid:d27459b7-8213-4395-aa77-ed859a3e5b3a</dm:deviceID>\n'
    b' </dm:device>\n'
    b'<dm:person id="p4159">\n'
    b'    <rpid:activities><rpid:away/></rpid:activities>\n'
    b'  </dm:person>\n'
    b'</presence>\n'
)


def test_s52_s54_composed_document_byte_for_byte(pkg: PresencePackage) -> None:
    clash = BARESIP_AWAY.replace(b'"t4109"', b'"qmtt3h"')
    assert pkg.compose(ENTITY, [PJSUA, LINPHONE, clash]).body == COMPOSED_PJSUA_LINPHONE_BARESIP
