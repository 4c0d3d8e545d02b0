"""The one hardened XML parser and the faithful serialiser (D8, S52, S54)."""

from __future__ import annotations

import socket
import time

import pytest
from lxml import etree

from presence_node.packages.base import BadBody
from presence_node.xmlsafe import children_bytes, escape_attr, escape_text, parse_xml, root_nsmap, xmlns_decls

PIDF_NS = "urn:ietf:params:xml:ns:pidf"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com">
<tuple id="t1"><status><basic>open</basic></status><note>&lol9;</note></tuple>
</presence>
"""


def xxe_body(system_id: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE presence [ <!ENTITY xxe SYSTEM "{system_id}"> ]>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com">
<tuple id="t1"><status><basic>open</basic></status><note>&xxe;</note></tuple>
</presence>
""".encode()


@pytest.fixture
def listener():
    """A TCP listener that would see any connection the parser made."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(0.2)
    yield sock
    sock.close()


def assert_no_connection(sock: socket.socket) -> None:
    with pytest.raises(socket.timeout):
        conn, _ = sock.accept()
        conn.close()


def test_wellformed_pidf_parses() -> None:
    root = parse_xml(
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@example.com">'
        b'<tuple id="t1"><status><basic>open</basic></status>'
        b"<note>caf\xc3\xa9 &amp; tea</note></tuple></presence>"
    )
    assert root.tag == f"{{{PIDF_NS}}}presence"
    assert root.findtext(f".//{{{PIDF_NS}}}note") == "caf\u00e9 & tea"


def test_d8_not_wellformed_rejected() -> None:
    with pytest.raises(BadBody) as err:
        parse_xml(b'<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="t1"></presence>')
    assert err.value.status_hint == 400
    assert "well-formed" in err.value.reason


def test_billion_laughs_rejected() -> None:
    started = time.perf_counter()
    with pytest.raises(BadBody) as err:
        parse_xml(BILLION_LAUGHS)
    assert time.perf_counter() - started < 0.5
    assert err.value.status_hint == 400
    assert "DOCTYPE" in err.value.reason
    assert "lollol" not in err.value.reason


def test_xxe_rejected(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for system_id in ("file:///etc/passwd", "http://127.0.0.1:9/", f"http://127.0.0.1:{port}/x"):
        with pytest.raises(BadBody) as err:
            parse_xml(xxe_body(system_id))
        assert err.value.status_hint == 400
        assert "DOCTYPE" in err.value.reason
        assert "root:" not in err.value.reason
    assert_no_connection(listener)


def test_xxe_parameter_entity_and_external_dtd_rejected(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    bodies = [
        f'<!DOCTYPE p [<!ENTITY % ext SYSTEM "http://127.0.0.1:{port}/e.dtd"> %ext;]><p/>'.encode(),
        f'<!DOCTYPE p SYSTEM "http://127.0.0.1:{port}/p.dtd"><p/>'.encode(),
        b'<!DOCTYPE p [<!ENTITY % f SYSTEM "file:///etc/passwd"> %f;]><p/>',
        b"<!DOCTYPE p><p/>",
    ]
    for body in bodies:
        with pytest.raises(BadBody):
            parse_xml(body)
    assert_no_connection(listener)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32", "utf-7"])
def test_doctype_rejected_whatever_the_encoding(codec: str) -> None:
    """UTF-32 and UTF-7 escape the byte scan and are caught after parsing."""
    text = f'<?xml version="1.0" encoding="{codec.upper()}"?><!DOCTYPE p [<!ENTITY e "x">]><p>&e;</p>'
    with pytest.raises(BadBody) as err:
        parse_xml(text.encode(codec))
    assert "DOCTYPE" in err.value.reason


def test_undeclared_entity_rejected() -> None:
    with pytest.raises(BadBody):
        parse_xml(b"<p>&xxe;</p>")


def test_parser_reusable_after_failure() -> None:
    with pytest.raises(BadBody):
        parse_xml(BILLION_LAUGHS)
    with pytest.raises(BadBody):
        parse_xml(b"<broken")
    assert parse_xml(b"<ok a='1'/>").get("a") == "1"


def test_size_limit_is_413() -> None:
    body = b"<p>" + b"x" * 2000 + b"</p>"
    assert parse_xml(body, max_bytes=len(body)).text == "x" * 2000
    with pytest.raises(BadBody) as err:
        parse_xml(body, max_bytes=len(body) - 1)
    assert err.value.status_hint == 413


def test_escape_round_trips_untrusted_values() -> None:
    nasty = 'sip:"x"<y>&z;\t\n\r\x01@evil.example'
    doc = f'<w a="{escape_attr(nasty)}">{escape_text(nasty)}</w>'.encode()
    root = parse_xml(doc)
    expected = nasty.replace("\x01", "\ufffd")
    assert root.get("a") == expected
    assert root.text == expected


def test_s54_children_bytes_keeps_prefixes_and_drops_redundant_declarations() -> None:
    source = parse_xml(
        b'<presence xmlns="urn:ietf:params:xml:ns:pidf" '
        b'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        b'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@example.com">'
        b'<dm:person id="p1"><rpid:activities><rpid:away/></rpid:activities></dm:person></presence>'
    )
    nsmap = root_nsmap(PIDF_NS, [source])
    [data] = children_bytes(source, [source[0]], nsmap)
    assert data == b'<dm:person id="p1"><rpid:activities><rpid:away/></rpid:activities></dm:person>'
    rebuilt = parse_xml(f"<presence{xmlns_decls(nsmap)}>".encode() + data + b"</presence>")
    away = rebuilt.find(".//{urn:ietf:params:xml:ns:pidf:rpid}away")
    assert away is not None and away.prefix == "rpid"


def test_s52_children_bytes_keeps_conflicting_and_unqualified_names() -> None:
    first = parse_xml(
        b'<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns:x="urn:one"><x:a/></p:presence>'
    )
    second = parse_xml(
        b'<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns:x="urn:two">'
        b"<x:b><plain/></x:b></p:presence>"
    )
    nsmap = root_nsmap(PIDF_NS, [first, second])
    assert nsmap["x"] == "urn:one"
    body = b"".join(children_bytes(root, [root[0]], nsmap)[0] for root in (first, second))
    rebuilt = parse_xml(f"<presence{xmlns_decls(nsmap)}>".encode() + body + b"</presence>")
    assert [etree.QName(e).namespace for e in rebuilt.iter()] == [PIDF_NS, "urn:one", "urn:two", None]
    assert [e.prefix for e in rebuilt.iter()][1:3] == ["x", "x"]


def test_s52_children_bytes_cut_between_comments_instructions_and_text() -> None:
    """Other nodes of the source root stay out; a child's own ``xmlns=""``
    is not doubled; of the differing bindings only the used one is added;
    a declaration the new root makes identically is dropped."""
    source = parse_xml(
        b'<r xmlns:q="urn:a" xmlns:z="urn:z" xmlns:u="urn:unused"><!-- <c/> --><a x="&gt;&quot;"/>text'
        b'<?pi <b/>?><b xmlns=""/><q:c xmlns:z="urn:z"><z:d/></q:c></r>'
    )
    first = parse_xml(b'<p xmlns="urn:ietf:params:xml:ns:pidf" xmlns:q="urn:other" xmlns:u="urn:u2"/>')
    nsmap = root_nsmap(PIDF_NS, [first, source])
    assert children_bytes(source, [source[1], source[3], source[4]], nsmap) == [
        b'<a xmlns="" x="&gt;&quot;"/>',
        b'<b xmlns=""/>',
        b'<q:c xmlns="" xmlns:q="urn:a"><z:d/></q:c>',
    ]
