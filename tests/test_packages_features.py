"""The as-feature-event package (BroadWorks Device Feature Key
Synchronization, ECMA-323 CSTA bodies) as a pure unit: the four bodies a
phone or a backend sends, their checks, and the full-state document."""

from __future__ import annotations

import email.parser
import email.policy

import pytest
from lxml import etree

from presence_node.packages.base import BadBody, UnsupportedBody
from presence_node.packages.features import CSTA_NS, FEATURE_TYPE, FeaturePackage, read_feature

ENTITY = "sip:1000@example.com"
NS = {"c": CSTA_NS}


def csta(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<{root} xmlns="{CSTA_NS}">{inner}</{root}>'.encode("latin-1")


DND_ON = csta("SetDoNotDisturb", "<device>1000</device><doNotDisturbOn>true</doNotDisturbOn>")
CFA = csta("SetForwarding", "<device>1000</device><forwardingType>forwardImmediate</forwardingType>"
                            "<activateForward>true</activateForward><forwardDN>2000</forwardDN>")
CFNA = csta("SetForwarding", "<device>1000</device><forwardingType>forwardNoAns</forwardingType>"
                             "<activateForward>true</activateForward><forwardDN>vm</forwardDN><ringCount>4</ringCount>")


@pytest.fixture
def pkg() -> FeaturePackage:
    return FeaturePackage()


def parts(body: bytes, ctype: str) -> list[etree._Element]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    assert msg.is_multipart()
    out = []
    for part in msg.iter_parts():
        assert part.get_content_type() == FEATURE_TYPE
        out.append(etree.fromstring(part.get_payload(decode=True)))
    return out


def test_set_bodies_read_as_feature_states() -> None:
    dnd = read_feature(DND_ON)
    assert (dnd.feature, dnd.device, dnd.on) == ("doNotDisturb", "1000", True)
    cfna = read_feature(CFNA)
    assert (cfna.feature, cfna.on, cfna.forward_to, cfna.ring_count) == ("forwardNoAns", True, "vm", 4)
    event = read_feature(csta("ForwardingEvent", "<device>1000</device><forwardingType>forwardBusy</forwardingType>"
                                                 "<forwardStatus>false</forwardStatus>"))
    assert (event.feature, event.on, event.forward_to) == ("forwardBusy", False, "")


@pytest.mark.parametrize(("body", "why"), [
    (csta("SetDoNotDisturb", "<device>1000</device><doNotDisturbOn>maybe</doNotDisturbOn>"), "true or false"),
    (csta("SetDoNotDisturb", "<device>1000</device>"), "doNotDisturbOn"),
    (csta("SetForwarding", "<device>1000</device><forwardingType>forwardSometimes</forwardingType>"
                           "<activateForward>true</activateForward>"), "forwardingType"),
    (csta("SetForwarding", "<device>1000</device><forwardingType>forwardNoAns</forwardingType>"
                           "<activateForward>true</activateForward><ringCount>many</ringCount>"), "ringCount"),
    (csta("SetForwarding", "<device>1000</device><forwardingType>forwardBusy</forwardingType>"
                           "<activateForward>true</activateForward><forwardDN>" + "9" * 300 + "</forwardDN>"),
     "forwardDN"),
    (csta("SetMessageWaiting", "<device>1000</device>"), "SetMessageWaiting"),
    (b'<SetDoNotDisturb xmlns="urn:other"><doNotDisturbOn>true</doNotDisturbOn></SetDoNotDisturb>', "SetDoNotDisturb"),
    (b"<SetDoNotDisturb", "XML"),
])
def test_bad_bodies_are_400_naming_the_fault(pkg: FeaturePackage, body: bytes, why: str) -> None:
    with pytest.raises(BadBody) as err:
        pkg.check_publication(body, FEATURE_TYPE)
    assert err.value.status_hint == 400 and why in err.value.reason


def test_other_content_type_is_415(pkg: FeaturePackage) -> None:
    with pytest.raises(UnsupportedBody):
        pkg.check_publication(DND_ON, "application/xml")


def test_full_state_has_every_feature_defaults_off(pkg: FeaturePackage) -> None:
    """The document a phone gets holds DND and the three forwardings, each
    part an ``application/x-as-feature-event+xml`` event, as BroadWorks
    sends after a SUBSCRIBE; a feature never set is off."""
    doc = pkg.compose(ENTITY, [])
    assert doc.content_type.startswith("multipart/mixed;boundary=")
    dnd, *forwards = parts(doc.render(0), doc.content_type)
    assert dnd.tag == f"{{{CSTA_NS}}}DoNotDisturbEvent"
    assert dnd.findtext("c:device", namespaces=NS) == "1000"
    assert dnd.findtext("c:doNotDisturbOn", namespaces=NS) == "false"
    assert [f.findtext("c:forwardingType", namespaces=NS) for f in forwards] == [
        "forwardImmediate", "forwardBusy", "forwardNoAns"]
    assert {f.findtext("c:forwardStatus", namespaces=NS) for f in forwards} == {"false"}


def test_newest_setting_of_each_feature_wins(pkg: FeaturePackage) -> None:
    dnd_off = csta("SetDoNotDisturb", "<device>1000</device><doNotDisturbOn>false</doNotDisturbOn>")
    dnd, cfa, _, cfna = parts(*(lambda d: (d.render(0), d.content_type))(pkg.compose(ENTITY, [DND_ON, CFA, CFNA, dnd_off])))
    assert dnd.findtext("c:doNotDisturbOn", namespaces=NS) == "false"
    assert (cfa.findtext("c:forwardStatus", namespaces=NS), cfa.findtext("c:forwardTo", namespaces=NS)) == ("true", "2000")
    assert cfna.findtext("c:ringCount", namespaces=NS) == "4"


def test_device_text_is_escaped(pkg: FeaturePackage) -> None:
    body = csta("SetDoNotDisturb", "<device>a&amp;b&lt;c</device><doNotDisturbOn>true</doNotDisturbOn>")
    doc = pkg.compose(ENTITY, [body])
    dnd = parts(doc.render(0), doc.content_type)[0]
    assert dnd.findtext("c:device", namespaces=NS) == "a&b<c"
