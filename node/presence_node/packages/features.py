"""The ``as-feature-event`` package: Device Feature Key Synchronization.

BroadWorks' DFKS (ECMA-323 CSTA bodies), which Polycom, Yealink and Cisco
phones speak, keeps a phone's Do Not Disturb and call-forwarding keys in
step with the server.  A phone SUBSCRIBEs to its own AOR; a SUBSCRIBE that
carries a ``SetDoNotDisturb`` or ``SetForwarding`` body changes a feature,
and every NOTIFY carries the full state: one ``DoNotDisturbEvent`` and one
``ForwardingEvent`` per forwarding type, as the parts of a
``multipart/mixed`` body (what BroadWorks sends after a SUBSCRIBE).

Each feature is one stored publication (its last ``Set…`` or ``…Event``
body), so a change of one never rewrites another and the PUBLISH machinery
(etags, expiry, clustering) serves as it is; composing takes the newest
body per feature, and a feature never set is off.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lxml import etree

from ..xmlsafe import XmlLimits, check_limits, escape_text, parse_xml
from .base import BadBody, Document, require_type

CSTA_NS = "http://www.ecma-international.org/standards/ecma-323/csta/ed3"
FEATURE_TYPE = "application/x-as-feature-event+xml"
DND = "doNotDisturb"
#: The forwarding types DFKS synchronises, in the order a NOTIFY lists them.
FORWARDINGS = ("forwardImmediate", "forwardBusy", "forwardNoAns")
#: Longest forwarding destination or device name kept (a dial string or URI).
MAX_TEXT = 256
MAX_RING_COUNT = 99

_DND_ROOTS = {f"{{{CSTA_NS}}}SetDoNotDisturb": "doNotDisturbOn", f"{{{CSTA_NS}}}DoNotDisturbEvent": "doNotDisturbOn"}
_FWD_ROOTS = {f"{{{CSTA_NS}}}SetForwarding": ("activateForward", "forwardDN"),
              f"{{{CSTA_NS}}}ForwardingEvent": ("forwardStatus", "forwardTo")}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'


@dataclass(frozen=True, slots=True)
class FeatureState:
    """One feature of one device: DND, or one forwarding type."""

    feature: str  # DND or one of FORWARDINGS
    device: str
    on: bool
    forward_to: str = ""
    ring_count: int | None = None

    def event_xml(self) -> str:
        """The ``…Event`` a phone reads (written here, so always escaped)."""
        device = f"<device>{escape_text(self.device)}</device>"
        if self.feature == DND:
            inner = f"{device}<doNotDisturbOn>{_bool(self.on)}</doNotDisturbOn>"
            return f'{_XML_DECL}<DoNotDisturbEvent xmlns="{CSTA_NS}">{inner}</DoNotDisturbEvent>'
        inner = f"{device}<forwardingType>{self.feature}</forwardingType><forwardStatus>{_bool(self.on)}</forwardStatus>"
        if self.forward_to:
            inner += f"<forwardTo>{escape_text(self.forward_to)}</forwardTo>"
        if self.ring_count is not None:
            inner += f"<ringCount>{self.ring_count}</ringCount>"
        return f'{_XML_DECL}<ForwardingEvent xmlns="{CSTA_NS}">{inner}</ForwardingEvent>'


def read_feature(body: bytes, limits: XmlLimits = XmlLimits()) -> FeatureState:
    """The feature a ``Set…`` or ``…Event`` body sets; :class:`BadBody` (400)
    naming the fault for anything else."""
    root = parse_xml(body)
    check_limits(root, limits)
    if root.tag in _DND_ROOTS:
        return FeatureState(DND, _device(root), _flag(root, _DND_ROOTS[root.tag]))
    if root.tag in _FWD_ROOTS:
        flag, target = _FWD_ROOTS[root.tag]
        kind = _text(root, "forwardingType")
        if kind not in FORWARDINGS:
            raise BadBody(f"forwardingType must be one of {', '.join(FORWARDINGS)}, got {kind!r}")
        forward_to = _text(root, target)
        if len(forward_to) > MAX_TEXT:
            raise BadBody(f"{target} is longer than {MAX_TEXT} characters")
        ring = _text(root, "ringCount")
        if ring and not (ring.isascii() and ring.isdigit() and int(ring) <= MAX_RING_COUNT):
            raise BadBody(f"ringCount must be a whole number 0-{MAX_RING_COUNT}, got {ring[:20]!r}")
        return FeatureState(kind, _device(root), _flag(root, flag), forward_to, int(ring) if ring else None)
    local = etree.QName(root).localname
    raise BadBody(f"as-feature-event takes SetDoNotDisturb, SetForwarding, DoNotDisturbEvent or ForwardingEvent "
                  f"in {CSTA_NS}, not {local}")


class FeaturePackage:
    """``Event: as-feature-event`` (DND and call-forward key synchronisation)."""

    name: str = "as-feature-event"
    content_types: tuple[str, ...] = (FEATURE_TYPE,)
    publishable: bool = True

    def __init__(self, limits: XmlLimits = XmlLimits()) -> None:
        self.limits = limits

    def check_publication(self, body: bytes, content_type: str) -> bytes:
        """Accept one feature's ``Set…``/``…Event`` body and return it unchanged."""
        require_type(self.name, content_type, FEATURE_TYPE)
        read_feature(body, self.limits)
        return body

    def compose(self, entity: str, bodies: Sequence[bytes], params: Mapping[str, str] | None = None) -> Document:
        """Every feature's state, newest body per feature (bodies are oldest
        first), a feature never set off for the device named by the
        entity's user part; ``params`` unused."""
        device = entity.split(":", 1)[-1].split("@", 1)[0]
        states = {DND: FeatureState(DND, device, False)}
        states.update({kind: FeatureState(kind, device, False) for kind in FORWARDINGS})
        for body in bodies:
            state = read_feature(body, self.limits)
            states[state.feature] = state
        events = [states[kind].event_xml().encode() for kind in (DND, *FORWARDINGS)]
        # A boundary no part can hold: derived from the parts themselves.
        boundary = "dfks-" + hashlib.sha1(b"".join(events)).hexdigest()[:24]
        out = [b"--%s\r\nContent-Type: %s\r\n\r\n%s\r\n" % (boundary.encode(), FEATURE_TYPE.encode(), event)
               for event in events]
        out.append(b"--%s--\r\n" % boundary.encode())
        return Document(b"".join(out), f"multipart/mixed;boundary={boundary}")


def _text(root: etree._Element, name: str) -> str:
    found = root.find(f"{{{CSTA_NS}}}{name}")
    return (found.text or "").strip() if found is not None else ""


def _device(root: etree._Element) -> str:
    device = _text(root, "device")
    if len(device) > MAX_TEXT:
        raise BadBody(f"device is longer than {MAX_TEXT} characters")
    return device


def _flag(root: etree._Element, name: str) -> bool:
    value = _text(root, name)
    if not value:
        raise BadBody(f"{etree.QName(root).localname} needs <{name}>")
    if value.lower() not in _BOOLEANS:
        raise BadBody(f"{name} must be true or false, got {value[:20]!r}")
    return _BOOLEANS[value.lower()]


def _bool(value: bool) -> str:
    return "true" if value else "false"
