"""The ``presence`` package (RFC 3856) with PIDF bodies (RFC 3863).

Published bodies are checked only in the parts the server reads (D8) and then
stored and passed on byte for byte: RPID, data-model and vendor elements must
reach watchers exactly as the publisher wrote them (S52, S54).  Composition of
several publications (S53) copies each source element's serialised bytes under
a new root, so prefixes survive; only colliding ``id`` values are changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from lxml import etree

from ..xmlsafe import (
    UniqueIds,
    XmlLimits,
    check_limits,
    children_bytes,
    escape_attr,
    parse_xml,
    root_nsmap,
    xmlns_decls,
)
from .base import BadBody, Document, require_type

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DATA_MODEL_NS = "urn:ietf:params:xml:ns:pidf:data-model"
PIDF_TYPE = "application/pidf+xml"

_PRESENCE = f"{{{PIDF_NS}}}presence"
_TUPLE = f"{{{PIDF_NS}}}tuple"
_STATUS = f"{{{PIDF_NS}}}status"
_BASIC = f"{{{PIDF_NS}}}basic"
_NOTE = f"{{{PIDF_NS}}}note"
_PERSON = f"{{{DATA_MODEL_NS}}}person"
_BASIC_VALUES = frozenset({"open", "closed"})
_XML_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class PresencePackage:
    """``Event: presence``: PUBLISH and SUBSCRIBE with ``application/pidf+xml``."""

    name: str = "presence"
    content_types: tuple[str, ...] = (PIDF_TYPE,)
    publishable: bool = True

    def __init__(self, limits: XmlLimits = XmlLimits()) -> None:
        self.limits = limits

    def check_publication(self, body: bytes, content_type: str) -> bytes:
        """Accept a PIDF body (D8, S44, S51) and return it unchanged.

        Refused with 400: not well-formed, not a PIDF ``<presence>`` with an
        ``entity``, a tuple without ``id`` or ``<status>``, duplicate tuple ids,
        or a ``<basic>`` other than ``open``/``closed`` (baresip's ``unknown``),
        or beyond ``limits`` (:class:`~.base.BodyOverLimit`).
        """
        require_type(self.name, content_type, PIDF_TYPE)
        root = parse_xml(body)
        check_limits(root, self.limits)
        if root.tag != _PRESENCE:
            raise BadBody(f"PIDF root must be <presence> in {PIDF_NS}, got {root.tag}")
        if not root.get("entity"):
            raise BadBody("PIDF <presence> lacks its entity attribute")
        seen: set[str] = set()
        for tup in root.iterchildren(_TUPLE):
            tuple_id = tup.get("id")
            if not tuple_id:
                raise BadBody("PIDF <tuple> without an id")
            if tuple_id in seen:
                raise BadBody(f"PIDF tuple id {tuple_id!r} is not unique")
            seen.add(tuple_id)
            # iterchildren is several times cheaper than find (no path compile).
            status = next(tup.iterchildren(_STATUS), None)
            if status is None:
                raise BadBody(f"PIDF tuple {tuple_id!r} has no <status>")
            basic = next(status.iterchildren(_BASIC), None)
            if basic is not None and (basic.text or "").strip() not in _BASIC_VALUES:
                raise BadBody(f"PIDF <basic> must be open or closed, got {(basic.text or '').strip()!r}")
        return body

    def compose(self, entity: str, bodies: Sequence[bytes], params: Mapping[str, str] | None = None) -> Document:
        """One PIDF document for the presentity (D3, S53); ``params`` unused.

        No body gives the offline document, one body whose entity is the
        presentity URI is passed on as is, and otherwise the bodies are merged: all tuples first, then presence-level notes
        (identical ones once), then every other element, with only the newest
        ``<dm:person>`` kept.  Bodies are oldest first, so the newest person
        is the last one seen.
        """
        if not bodies:
            return Document(offline_pidf(entity), PIDF_TYPE)
        roots = [parse_xml(body) for body in bodies]
        if len(roots) == 1 and roots[0].get("entity") == entity:
            return Document(bodies[0], PIDF_TYPE)
        # Several bodies, or one whose entity is not the presentity URI (an
        # IP, a port, sips:): rebuilt so that entity is right (S51).
        children = [list(root.iterchildren(tag=etree.Element)) for root in roots]
        tuples: list[etree._Element] = []
        notes: list[etree._Element] = []
        others: list[etree._Element] = []
        person: etree._Element | None = None
        for elements in children:
            for child in elements:
                if child.tag == _TUPLE:
                    tuples.append(child)
                elif child.tag == _NOTE:
                    notes.append(child)
                elif child.tag == _PERSON:
                    person = child
                else:
                    others.append(child)
        if person is not None:
            others.append(person)
        ids = UniqueIds()
        for element in tuples + notes + others:
            ids.rename(element)
        nsmap = root_nsmap(PIDF_NS, roots)
        serialised: dict[etree._Element, bytes] = {}
        for root, elements in zip(roots, children):
            serialised.update(zip(elements, children_bytes(root, elements, nsmap)))
        parts = [
            _XML_DECL,
            f'<presence{xmlns_decls(nsmap)} entity="{escape_attr(entity)}">'.encode(),
        ]
        parts += [b"\n" + serialised[element] for element in tuples]
        # Presence-level notes: identical ones once.
        parts += [b"\n" + data for data in dict.fromkeys(serialised[element] for element in notes)]
        parts += [b"\n" + serialised[element] for element in others]
        parts.append(b"\n</presence>\n")
        return Document(b"".join(parts), PIDF_TYPE)


def offline_pidf(entity: str) -> bytes:
    """The D3 document: one ``closed`` tuple whose id is stable for ``entity``.

    The id is a hash so that it is a valid XML ID whatever the URI holds and
    the same on every node of a cluster.
    """
    tuple_id = "offline-" + hashlib.blake2s(entity.encode(), digest_size=6).hexdigest()
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="{PIDF_NS}" entity="{escape_attr(entity)}">\n'
        f'<tuple id="{tuple_id}"><status><basic>closed</basic></status></tuple>\n'
        f"</presence>\n"
    ).encode()
