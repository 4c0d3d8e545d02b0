"""The RLMI list document (RFC 4662 §5) as a pure unit: the multipart
structure of the RFC's examples, version and fullState, stable instance
ids and Content-IDs that match."""

from __future__ import annotations

import email.parser
import email.policy

from lxml import etree

from presence_node.packages.base import Document
from presence_node.packages.rlmi import RLMI_NS, RLMI_TYPE, ListDocument, Resource

NS = {"r": RLMI_NS}
LIST = "sip:alice-blf@example.com"


def pidf(user: str) -> Document:
    return Document(f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{user}@example.com"/>'.encode(),
                    "application/pidf+xml")


def parse(doc: ListDocument, version: int):
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + doc.content_type.encode() + b"\r\n\r\n" + doc.render(version))
    assert msg.get_content_type() == "multipart/related"
    assert msg.get_param("type") == RLMI_TYPE
    parts = list(msg.iter_parts())
    return msg, parts


def test_rfc4662_5_root_part_is_the_rlmi_named_by_start():
    doc = ListDocument(LIST, "sub1", [Resource("sip:bob@example.com", pidf("bob")),
                                      Resource("sip:carol@example.com", pidf("carol"))], full=True)
    msg, parts = parse(doc, 0)
    root = parts[0]
    assert root["Content-ID"] == msg.get_param("start")
    assert root.get_content_type() == RLMI_TYPE
    rlmi = etree.fromstring(root.get_payload(decode=True))
    assert rlmi.tag == f"{{{RLMI_NS}}}list"
    assert (rlmi.get("uri"), rlmi.get("version"), rlmi.get("fullState")) == (LIST, "0", "true")
    resources = rlmi.findall("r:resource", NS)
    assert [r.get("uri") for r in resources] == ["sip:bob@example.com", "sip:carol@example.com"]
    # Each instance's cid names exactly one part, holding that resource's document.
    by_cid = {p["Content-ID"].strip("<>"): p for p in parts[1:]}
    for r in resources:
        [inst] = r.findall("r:instance", NS)
        assert inst.get("state") == "active"
        part = by_cid[inst.get("cid")]
        assert part.get_content_type() == "application/pidf+xml"
        user = r.get("uri").split(":")[1].split("@")[0]
        assert f"sip:{user}@example.com".encode() in part.get_payload(decode=True)
    assert len(by_cid) == 2


def test_rfc4662_5_3_version_counts_and_instance_ids_are_stable():
    full = ListDocument(LIST, "sub1", [Resource("sip:bob@example.com", pidf("bob"))], full=True)
    partial = ListDocument(LIST, "sub1", [Resource("sip:bob@example.com", pidf("bob"))], full=False)
    _, a = parse(full, 0)
    _, b = parse(partial, 1)
    ra, rb = (etree.fromstring(p[0].get_payload(decode=True)) for p in (a, b))
    assert (rb.get("version"), rb.get("fullState")) == ("1", "false")
    ia, ib = (r.find("r:resource/r:instance", NS) for r in (ra, rb))
    assert ia.get("id") == ib.get("id")
    assert ia.get("cid") != ib.get("cid")  # a Content-ID is unique per message
    other = ListDocument(LIST, "sub2", [Resource("sip:bob@example.com", pidf("bob"))], full=True)
    _, c = parse(other, 0)
    assert etree.fromstring(c[0].get_payload(decode=True)).find("r:resource/r:instance", NS).get("id") != ia.get("id")


def test_uris_are_escaped():
    doc = ListDocument('sip:a"b@example.com', "s", [Resource("sip:x&y@example.com", pidf("x"))], full=True)
    _, parts = parse(doc, 0)
    rlmi = etree.fromstring(parts[0].get_payload(decode=True))
    assert rlmi.get("uri") == 'sip:a"b@example.com'
    assert rlmi.find("r:resource", NS).get("uri") == "sip:x&y@example.com"
