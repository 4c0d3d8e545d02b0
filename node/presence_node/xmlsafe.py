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
trees, which lets lxml pick new prefixes.  :func:`children_bytes` cuts them
out of one serialisation of their source root, so composing costs time linear
in the bodies (serialising each child on its own makes lxml write every
namespace in scope on it: prefixes x children).  :func:`check_limits` bounds
what one body may hold; :class:`UniqueIds` keeps XML ids unique.
:func:`escape_attr` and :func:`escape_text` write untrusted values.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lxml import etree

from .packages.base import BadBody, BodyOverLimit

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
    :func:`children_bytes`), so nothing is re-prefixed.
    """
    nsmap: dict[str | None, str] = {None: default}
    for root in roots:
        for prefix, uri in root.nsmap.items():
            nsmap.setdefault(prefix, uri)
    return nsmap


@dataclass(frozen=True, slots=True)
class XmlLimits:
    """What one published body may hold (``limits`` in the configuration).

    Composition is linear in the bodies, but a namespace binding of one
    source that another source binds differently is repeated on every
    element that uses it, and every element costs memory while stored
    bodies are parsed: all three stay bounded per body.
    """

    #: Distinct namespace bindings (prefix and URI, the default one included).
    max_namespaces: int = 128
    #: Characters of one namespace name (URI).
    max_namespace_length: int = 256
    #: Elements, the root included.
    max_elements: int = 4096


def check_limits(root: etree._Element, limits: XmlLimits) -> None:
    """Refuse (400, :class:`BodyOverLimit`) a body beyond ``limits``.

    One walk over the parsed tree: ``start-ns`` reports each element's own
    declarations, so this never builds a per-element namespace map.
    """
    bindings: set[tuple[str, str]] = set()
    elements = 0
    for event, item in etree.iterwalk(root, events=("start", "start-ns")):
        if event == "start":
            elements += 1
            if elements > limits.max_elements:
                raise BodyOverLimit(
                    "max_xml_elements", f"XML body has more than {limits.max_elements} elements (max_xml_elements)"
                )
        else:
            if len(item[1]) > limits.max_namespace_length:
                raise BodyOverLimit(
                    "max_xml_namespace_length",
                    f"XML namespace name longer than {limits.max_namespace_length} characters "
                    "(max_xml_namespace_length)",
                )
            bindings.add(item)
            if len(bindings) > limits.max_namespaces:
                raise BodyOverLimit(
                    "max_xml_namespaces",
                    f"XML body has more than {limits.max_namespaces} namespace bindings (max_xml_namespaces)",
                )


# A start tag as libxml2 writes it: the name, then attributes and namespace
# declarations, each value quoted (``"``, or ``'`` for a URI holding ``"``).
_TAG_NAME = re.compile(rb"<[^\s/>]+")
_ATTRIBUTE = re.compile(rb"""\s+([^\s=]+)=(?:"[^"]*"|'[^']*')""")
# Qualified element and attribute names; a match inside text only adds a
# declaration that is not needed.
_PREFIXED_NAME = re.compile(rb"""[<\s]([^\s<>/="':!?]+):[^\s<>/="':]+(?=[\s/>=])""")
_UNPREFIXED_ELEMENT = re.compile(rb"<[^\s<>/!?:]+[\s/>]")


def children_bytes(
    root: etree._Element, children: Sequence[etree._Element], inherited: Mapping[str | None, str]
) -> list[bytes]:
    """Serialise ``children`` (element children of ``root``, in document
    order; UTF-8, prefixes untouched) for placement under a root that
    declares ``inherited``.

    ``root`` is serialised once, with its other nodes removed and a mark
    as its text and as the tail of each child, and the children are cut out
    of it.  The mark is 128 random bits drawn for each call, so no body can
    be written to hold it.  Each child keeps its own declarations except
    those ``inherited`` already makes, and gets those of ``root`` that
    ``inherited`` binds differently and that it uses.  If ``root`` has no
    default namespace but the new root declares one, ``xmlns=""`` is added
    so unqualified names stay unqualified.

    The tree is spent afterwards (nodes removed, text replaced): callers
    parse the bodies for each composition.
    """
    if not children:
        return []
    if len(root) != len(children):
        wanted = set(children)
        for node in list(root):
            if node not in wanted:
                root.remove(node)
    mark = secrets.token_hex(16)
    root.text = mark
    for child in children:
        child.tail = mark
    pieces = etree.tostring(root, encoding="UTF-8").split(mark.encode())[1:-1]
    assert len(pieces) == len(children), "children must be element children of root, in document order"
    redundant = {xmlns_decls({prefix: uri}).encode().lstrip() for prefix, uri in inherited.items()}
    differing = {
        prefix: xmlns_decls({prefix: uri}).encode()
        for prefix, uri in root.nsmap.items()
        if inherited.get(prefix) != uri
    }
    empty_default = None in inherited and None not in root.nsmap
    return [_placed(piece, redundant, differing, empty_default) for piece in pieces]


def _placed(piece: bytes, redundant: set[bytes], differing: dict[str | None, bytes], empty_default: bool) -> bytes:
    """``piece`` with its start tag's declarations adjusted (see
    :func:`children_bytes`); work linear in the piece."""
    name = _TAG_NAME.match(piece)
    assert name is not None, piece[:40]
    pos = name.end()
    # The common case, in one scan of the start tag: no declaration of its
    # own, nothing to add.  libxml2 escapes '>' in attribute values, and one
    # in a namespace name comes after "xmlns", so the first '>' bounds it.
    if not differing and piece.find(b"xmlns", pos, piece.find(b">", pos)) < 0:
        return piece[:pos] + b' xmlns=""' + piece[pos:] if empty_default else piece
    own: list[bytes] = []
    attributes: list[bytes] = []
    declared: set[str | None] = set()
    while (m := _ATTRIBUTE.match(piece, pos)) is not None:
        attr = m.group(1)
        if attr == b"xmlns" or attr.startswith(b"xmlns:"):
            declared.add(attr[6:].decode() or None)
            if m.group(0).lstrip() not in redundant:
                own.append(m.group(0))
        else:
            attributes.append(m.group(0))
        pos = m.end()
    head = [name.group(0)]
    if empty_default and None not in declared:
        head.append(b' xmlns=""')
    head += own
    if differing.keys() - declared:
        used: set[str | None] = {p.decode() for p in _PREFIXED_NAME.findall(piece)}
        if _UNPREFIXED_ELEMENT.search(piece):
            used.add(None)
        head += [decl for prefix, decl in differing.items() if prefix in used and prefix not in declared]
    head += attributes
    return b"".join(head) + piece[pos:]


class UniqueIds:
    """Hands out XML ids unique within one composed document.

    A taken id gets the first free suffix ``-2``, ``-3``…; the next suffix
    to try is remembered per original id, so thousands of elements sharing
    one id are renamed in linear time (a probe from ``-2`` each time was
    quadratic).  Suffixes below the remembered one are all taken (ids are
    never released), so the result is the same as probing from ``-2``.
    """

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._next: dict[str, int] = {}

    def claim(self, original: str) -> str:
        """An id for an element whose source id is ``original``."""
        candidate = original
        if candidate in self._used:
            n = self._next.get(original, 2)
            candidate = f"{original}-{n}"
            while candidate in self._used:
                n += 1
                candidate = f"{original}-{n}"
            self._next[original] = n + 1
        self._used.add(candidate)
        return candidate

    def rename(self, element: etree._Element) -> None:
        """Give ``element`` its unique id (one without an ``id`` keeps none)."""
        original = element.get("id")
        if original is not None:
            unique = self.claim(original)
            if unique != original:
                element.set("id", unique)
