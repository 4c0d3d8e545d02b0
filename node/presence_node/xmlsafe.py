"""Untrusted XML in, faithful XML out.

Every published body is attacker-controlled, so there is exactly one way in:
:func:`parse_xml`, one shared lxml parser that never expands entities, never
loads a DTD and never opens a network connection, and that refuses any
document carrying a DOCTYPE at all.  PIDF, dialog-info and watcherinfo never
need one, so refusing it outright closes billion-laughs and XXE without having
to reason about which DTD features are harmless.

The way out serves composition.  Watchers match literal prefixes (baresip
looks for ``<rpid:away/>``, S54), so composed documents are built from the
serialised bytes of the source elements rather than by moving nodes between
trees, which lets lxml pick new prefixes.  :func:`element_bytes` does that and
drops the namespace declarations the new root already makes, so a composed
NOTIFY stays small (S08: above 1300 bytes it must go over TCP).
:func:`escape_attr` and :func:`escape_text` write untrusted values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from lxml import etree

from .packages.base import BadBody

#: Bodies above this are refused before parsing (a SIP PUBLISH over UDP cannot
#: exceed 64 KiB; TCP bodies are allowed some head-room).
DEFAULT_MAX_BYTES = 256 * 1024

# Looked for before parsing, because libxml2 works on an internal subset's
# entity declarations (amplification checks) even when it substitutes nothing.
# A marker inside a comment or CDATA is refused too: no real body has one.
# The docinfo check after parsing covers encodings not listed here.
_DOCTYPE_MARKERS = tuple("<!DOCTYPE".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be"))
_NO_DOCTYPE = "XML body with a DOCTYPE refused (no DTDs or entity declarations allowed)"

# lxml parsers are not thread-safe; the node runs one asyncio thread.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=False,
)


def parse_xml(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._Element:
    """Parse an untrusted body and return its root element.

    Raises :class:`BadBody`: 400 for anything not well-formed or carrying a
    DOCTYPE, 413 (Request Entity Too Large) above ``max_bytes``.
    """
    if len(data) > max_bytes:
        raise BadBody(f"XML body of {len(data)} bytes exceeds the limit of {max_bytes}", status=413)
    if b"<!" in data or b"<\x00!" in data or b"\x00<\x00!" in data:
        # Only bodies with markup declarations (comments, CDATA, DOCTYPE)
        # pay for the full scan.
        if any(marker in data for marker in _DOCTYPE_MARKERS):
            raise BadBody(_NO_DOCTYPE)
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadBody(f"body is not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise BadBody(_NO_DOCTYPE)
    return root


# Characters XML 1.0 cannot carry at all, not even as character references.
_ILLEGAL = "[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
_ILLEGAL_RE = re.compile(_ILLEGAL)
# Most values (URIs, ids) need nothing: one search decides, then return as is.
_ATTR_SPECIAL = re.compile(f'[&<>"\t\n\r]|{_ILLEGAL}')
_TEXT_SPECIAL = re.compile(f"[&<>\r]|{_ILLEGAL}")
_ATTR_TABLE = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
)
_TEXT_TABLE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def escape_attr(value: str) -> str:
    """Escape ``value`` for a double-quoted attribute.

    Characters XML 1.0 forbids become U+FFFD; whitespace is written as
    character references so that attribute normalisation does not alter it.
    """
    if _ATTR_SPECIAL.search(value) is None:
        return value
    return _ILLEGAL_RE.sub("\ufffd", value).translate(_ATTR_TABLE)


def escape_text(value: str) -> str:
    """Escape ``value`` as element content (illegal characters become U+FFFD)."""
    if _TEXT_SPECIAL.search(value) is None:
        return value
    return _ILLEGAL_RE.sub("\ufffd", value).translate(_TEXT_TABLE)


def xmlns_decls(nsmap: Mapping[str | None, str]) -> str:
    """Serialise namespace declarations (``None`` is the default namespace)."""
    return "".join(
        f' xmlns="{escape_attr(uri)}"' if prefix is None else f' xmlns:{prefix}="{escape_attr(uri)}"'
        for prefix, uri in nsmap.items()
    )


def root_nsmap(default: str, roots: list[etree._Element]) -> dict[str | None, str]:
    """The declarations a composed root makes: ``default`` plus every prefix
    the source roots bind, first binding winning.

    A prefix bound to different URIs by two sources is declared once; the
    elements of the other source keep their own declaration (see
    :func:`element_bytes`), so nothing is re-prefixed.
    """
    nsmap: dict[str | None, str] = {None: default}
    for root in roots:
        for prefix, uri in root.nsmap.items():
            nsmap.setdefault(prefix, uri)
    return nsmap


def element_bytes(element: etree._Element, inherited: Mapping[str | None, str]) -> bytes:
    """Serialise ``element`` (UTF-8, prefixes untouched) for placement under a
    root that declares ``inherited``.

    lxml writes every namespace in scope on the start tag of a serialised
    subelement; the ones ``inherited`` already binds identically are dropped.
    If the element had no default namespace in scope but the new root declares
    one, ``xmlns=""`` is added so unqualified descendants stay unqualified.
    """
    data = etree.tostring(element, encoding="UTF-8", with_tail=False)
    # libxml2 escapes '>' inside attribute values, so the first '>' ends the start tag.
    end = data.index(b">")
    head = data[:end]
    for prefix, uri in element.nsmap.items():
        if inherited.get(prefix) == uri:
            decl = xmlns_decls({prefix: uri}).encode()
            head = head.replace(decl, b"", 1)
    if None in inherited and None not in element.nsmap:
        name_end = len(head.split(None, 1)[0].rstrip(b"/"))
        head = head[:name_end] + b' xmlns=""' + head[name_end:]
    return head + data[end:]
