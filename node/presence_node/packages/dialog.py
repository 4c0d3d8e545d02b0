"""The ``dialog`` package (RFC 4235), also serving ``dialog;sla`` (S72).

Phones publish ``application/dialog-info+xml`` (S71); the server merges the
``<dialog>`` elements of every live publication into one full document per
presentity (S66, and for ``dialog;sla`` the dialogs of the whole group).  The
root's ``version`` is per subscription (S67), so the composed body leaves the
number out and :meth:`Document.render` splices it in for each watcher.
"""

from __future__ import annotations

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

DIALOG_INFO_NS = "urn:ietf:params:xml:ns:dialog-info"
DIALOG_INFO_TYPE = "application/dialog-info+xml"

_DIALOG_INFO = f"{{{DIALOG_INFO_NS}}}dialog-info"
_DIALOG = f"{{{DIALOG_INFO_NS}}}dialog"
_STATE = f"{{{DIALOG_INFO_NS}}}state"
_LOCAL = f"{{{DIALOG_INFO_NS}}}local"
_REMOTE = f"{{{DIALOG_INFO_NS}}}remote"
_SESSION_DESCRIPTION = f"{{{DIALOG_INFO_NS}}}session-description"
_XML_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'
#: The one ``<dialog>`` of an idle document when ``idle_placeholder`` is on:
#: ended, so a lamp shows idle, and without call-id or tags, so no phone
#: mistakes it for a call it could pick up.
_PLACEHOLDER = b'<dialog id="idle" direction="recipient"><state>terminated</state></dialog>'


class DialogPackage:
    """``Event: dialog`` (BLF) or, with ``name="dialog;sla"``, shared lines."""

    content_types: tuple[str, ...] = (DIALOG_INFO_TYPE,)
    publishable: bool = True

    def __init__(
        self, name: str = "dialog", limits: XmlLimits = XmlLimits(), *, idle_placeholder: bool = False
    ) -> None:
        self.name = name
        self.limits = limits
        #: Some phones (seen with older Yealink and Cisco firmware, and the
        #: reason for Kamailio's ``force_dummy_dialog``) keep a BLF key dark
        #: until a document holds a ``<dialog>``: D3's empty document then
        #: reads as "no information" rather than "idle".
        self.idle_placeholder = idle_placeholder

    def check_publication(self, body: bytes, content_type: str) -> bytes:
        """Accept a dialog-info body (S44, S68) and return it unchanged.

        Refused with 400: not well-formed, not a ``<dialog-info>``, or a
        ``<dialog>`` without a unique ``id`` or a non-empty ``<state>``, or
        beyond ``limits`` (:class:`~.base.BodyOverLimit`).  A state outside
        RFC 4235's five passes: its schema types ``<state>`` as a string and
        RFC 7463's own examples use other values, so refusing them would
        break phones the RFCs allow.
        """
        require_type(self.name, content_type, DIALOG_INFO_TYPE)
        root = parse_xml(body)
        check_limits(root, self.limits)
        if root.tag != _DIALOG_INFO:
            raise BadBody(f"root must be <dialog-info> in {DIALOG_INFO_NS}, got {root.tag}")
        seen: set[str] = set()
        for dialog in root.iterchildren(_DIALOG):
            dialog_id = dialog.get("id")
            if not dialog_id:
                raise BadBody("<dialog> without an id")
            if dialog_id in seen:
                raise BadBody(f"dialog id {dialog_id!r} is not unique")
            seen.add(dialog_id)
            state = dialog.find(_STATE)
            value = (state.text or "").strip() if state is not None else ""
            if not value:
                raise BadBody(f"dialog {dialog_id!r} needs a non-empty <state>")
        return body

    def compose(self, entity: str, bodies: Sequence[bytes], params: Mapping[str, str] | None = None) -> Document:
        """One full ``<dialog-info>`` holding the dialogs the subscriber asked for.

        Every publication contributes its dialogs (each phone of a shared
        line publishes its own, S72).  One real dialog is known by its
        call-id and tags: published again (a phone that lost its etag and
        published afresh), the later copy wins (bodies are oldest first).
        Distinct dialogs that happen to share an ``id`` (two phones counting
        from 1) are both kept, the later one renamed so ids stay unique
        (S68).  ``params`` are the Event parameters of S65 (see
        :func:`_selected`).  No dialog left gives the idle document with no
        ``<dialog>`` (D3, S67), or with the placeholder when asked for.
        """
        params = params or {}
        roots = [parse_xml(body) for body in bodies]
        by_identity: dict[tuple[str | None, ...], etree._Element] = {}
        for root in roots:
            for dialog in root.iterchildren(_DIALOG):
                by_identity[_identity(dialog)] = dialog
        ids = UniqueIds()
        dialogs: list[etree._Element] = []
        for dialog in by_identity.values():
            base = dialog.get("id", "")
            dialog_id = ids.claim(base)
            if dialog_id != base:
                dialog.set("id", dialog_id)
            if _selected(dialog, params):
                dialogs.append(dialog)
        keep_sdp = "include-session-description" in params
        if not keep_sdp:
            for dialog in dialogs:
                for party in dialog.iterchildren(_LOCAL, _REMOTE):
                    for sdp in party.findall(_SESSION_DESCRIPTION):
                        party.remove(sdp)
        nsmap = root_nsmap(DIALOG_INFO_NS, roots)
        chosen = set(dialogs)
        serialised: dict[etree._Element, bytes] = {}
        for root in roots:
            elements = [dialog for dialog in root.iterchildren(_DIALOG) if dialog in chosen]
            serialised.update(zip(elements, children_bytes(root, elements, nsmap)))
        head = _XML_DECL + f'<dialog-info{xmlns_decls(nsmap)} version="'.encode()
        parts = [head, f'" state="full" entity="{escape_attr(entity)}">'.encode()]
        parts += [b"\n" + serialised[dialog] for dialog in dialogs]
        if not dialogs and self.idle_placeholder:
            parts.append(b"\n" + _PLACEHOLDER)
        parts.append(b"\n</dialog-info>\n")
        return Document(b"".join(parts), DIALOG_INFO_TYPE, version_at=len(head))


def _identity(dialog: etree._Element) -> tuple[str | None, ...]:
    """What names one real dialog: its call-id and tags, else its id."""
    call_id = dialog.get("call-id")
    if call_id is None:
        return ("id", dialog.get("id"))
    return ("call", call_id, dialog.get("local-tag"), dialog.get("remote-tag"))


def _selected(dialog: etree._Element, params: Mapping[str, str]) -> bool:
    """Whether ``dialog`` passes the ``call-id``/``from-tag``/``to-tag`` filter.

    Each parameter given must match; absent ones do not filter (RFC 4235
    §3.2).  ``from-tag`` and ``to-tag`` are the tags of the From and To of the
    dialog-creating INVITE, while ``local-tag``/``remote-tag`` are from the
    observed user's side: for ``direction="initiator"`` from-tag is the
    local tag, for ``recipient`` it is the remote tag, and without a
    direction either orientation matches.
    """
    call_id = params.get("call-id")
    if call_id is not None and dialog.get("call-id") != call_id:
        return False
    from_tag, to_tag = params.get("from-tag"), params.get("to-tag")
    if from_tag is None and to_tag is None:
        return True
    local, remote = dialog.get("local-tag"), dialog.get("remote-tag")
    as_initiator = _tags_match(from_tag, to_tag, local, remote)
    as_recipient = _tags_match(from_tag, to_tag, remote, local)
    direction = dialog.get("direction")
    if direction == "initiator":
        return as_initiator
    if direction == "recipient":
        return as_recipient
    return as_initiator or as_recipient


def _tags_match(from_tag: str | None, to_tag: str | None, from_side: str | None, to_side: str | None) -> bool:
    """Each given tag equals the dialog's tag on its side."""
    return (from_tag is None or from_tag == from_side) and (to_tag is None or to_tag == to_side)
