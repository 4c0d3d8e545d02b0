"""The dialog package for BLF and SLA (D3, S44, S64-S68, S71, S72)."""

from __future__ import annotations

import time

import pytest
from lxml import etree

from presence_node.packages.base import BadBody, UnsupportedBody
from presence_node.packages.dialog import DialogPackage

DI = "urn:ietf:params:xml:ns:dialog-info"
SA = "urn:ietf:params:xml:ns:sa-dialog-info"
NS = {"d": DI, "sa": SA}
ENTITY = "sip:200@example.com"
CTYPE = "application/dialog-info+xml"

# A desk phone in a confirmed inbound call, with SDP (as Polycom/Yealink send).
DESK = b"""<?xml version="1.0" encoding="UTF-8"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="3" state="full" entity="sip:200@example.com">
<dialog id="d1" call-id="c1-bench@192.0.2.1" local-tag="lt1" remote-tag="rt1" direction="recipient">
<state>confirmed</state>
<duration>42</duration>
<local><identity>sip:200@example.com</identity>
<session-description type="application/sdp">v=0</session-description></local>
<remote><identity display="Carol">sip:carol@example.com</identity>
<session-description type="application/sdp">v=0</session-description></remote>
</dialog>
</dialog-info>
"""

# A softphone on the same AOR: an outbound early dialog, an RFC 7463 appearance.
SOFT = b"""<?xml version="1.0"?>
<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" xmlns:sa="urn:ietf:params:xml:ns:sa-dialog-info"
  version="0" state="full" entity="sip:200@example.com">
<dialog id="d2" call-id="c2@198.51.100.7" local-tag="ft2" direction="initiator">
<sa:appearance>1</sa:appearance>
<state>early</state>
<remote><identity>sip:dave@example.com</identity></remote>
</dialog>
</dialog-info>
"""

# The desk phone's later publication: d1 ended.
DESK_ENDED = DESK.replace(b"<state>confirmed</state>", b'<state event="remote-bye">terminated</state>')


@pytest.fixture
def pkg() -> DialogPackage:
    return DialogPackage()


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def test_s64_s72_package_attributes() -> None:
    plain, sla = DialogPackage(), DialogPackage("dialog;sla")
    assert (plain.name, sla.name) == ("dialog", "dialog;sla")
    for pkg in (plain, sla):
        assert pkg.content_types == (CTYPE,)
        assert pkg.publishable


@pytest.mark.parametrize("body", [DESK, SOFT, DESK_ENDED])
def test_s71_published_bodies_accepted_byte_faithful(pkg: DialogPackage, body: bytes) -> None:
    assert pkg.check_publication(body, CTYPE) is body


def test_s44_wrong_content_type_is_415(pkg: DialogPackage) -> None:
    with pytest.raises(UnsupportedBody) as err:
        pkg.check_publication(DESK, "application/pidf+xml")
    assert err.value.status_hint == 415
    assert ("Accept", CTYPE) in err.value.headers


@pytest.mark.parametrize(
    ("dialog", "why"),
    [
        (b"<dialog><state>confirmed</state></dialog>", "without an id"),
        (b'<dialog id="x"></dialog>', "<state>"),
        (b'<dialog id="x"><state>  </state></dialog>', "<state>"),
        (
            b'<dialog id="x"><state>early</state></dialog><dialog id="x"><state>early</state></dialog>',
            "unique",
        ),
    ],
)
def test_s68_invalid_dialog_rejected(pkg: DialogPackage, dialog: bytes, why: str) -> None:
    body = (
        b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="0" state="full" entity="sip:a@b">'
    )
    with pytest.raises(BadBody) as err:
        pkg.check_publication(body + dialog + b"</dialog-info>", CTYPE)
    assert err.value.status_hint == 400
    assert why in err.value.reason


def test_s68_wrong_root_rejected(pkg: DialogPackage) -> None:
    with pytest.raises(BadBody):
        pkg.check_publication(b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"/>', CTYPE)


def test_s67_dialog_info_version_and_empty(pkg: DialogPackage) -> None:
    doc = pkg.compose(ENTITY, [])
    assert doc.content_type == CTYPE
    for version in (0, 1, 4294967295):
        root = parse(doc.render(version))
        assert root.tag == f"{{{DI}}}dialog-info"
        assert root.get("version") == str(version)
        assert root.get("state") == "full"
        assert root.get("entity") == ENTITY
        assert len(root) == 0


def test_s66_composition_gathers_every_phone(pkg: DialogPackage) -> None:
    doc = pkg.compose(ENTITY, [DESK, SOFT], {"include-session-description": ""})
    root = parse(doc.render(2))
    assert root.get("version") == "2"
    dialogs = root.findall("d:dialog", NS)
    assert [d.get("id") for d in dialogs] == ["d1", "d2"]
    assert [d.findtext("d:state", namespaces=NS) for d in dialogs] == ["confirmed", "early"]
    appearance = dialogs[1].find("sa:appearance", NS)
    assert appearance is not None and appearance.prefix == "sa" and appearance.text == "1"
    assert pkg.check_publication(doc.render(2), CTYPE)


def test_s66_later_body_wins_for_same_dialog(pkg: DialogPackage) -> None:
    root = parse(pkg.compose(ENTITY, [DESK, SOFT, DESK_ENDED]).render(0))
    states = {d.get("id"): d.find("d:state", NS) for d in root.findall("d:dialog", NS)}
    assert set(states) == {"d1", "d2"}
    assert states["d1"].text == "terminated" and states["d1"].get("event") == "remote-bye"


def test_s65_call_id_filter(pkg: DialogPackage) -> None:
    root = parse(pkg.compose(ENTITY, [DESK, SOFT], {"call-id": "c2@198.51.100.7"}).render(0))
    assert [d.get("id") for d in root.findall("d:dialog", NS)] == ["d2"]
    none = parse(pkg.compose(ENTITY, [DESK, SOFT], {"call-id": "nope"}).render(0))
    assert none.get("state") == "full" and none.findall("d:dialog", NS) == []


def test_s65_tag_filters_follow_direction(pkg: DialogPackage) -> None:
    # d1: observed user is the recipient, so the caller's From tag is remote-tag.
    params = {"call-id": "c1-bench@192.0.2.1", "from-tag": "rt1", "to-tag": "lt1"}
    root = parse(pkg.compose(ENTITY, [DESK, SOFT], params).render(0))
    assert [d.get("id") for d in root.findall("d:dialog", NS)] == ["d1"]
    swapped = {"call-id": "c1-bench@192.0.2.1", "from-tag": "lt1", "to-tag": "rt1"}
    assert parse(pkg.compose(ENTITY, [DESK], swapped).render(0)).findall("d:dialog", NS) == []
    # d2: initiator, so from-tag is its local-tag; no to-tag yet (early).
    root = parse(pkg.compose(ENTITY, [DESK, SOFT], {"from-tag": "ft2"}).render(0))
    assert [d.get("id") for d in root.findall("d:dialog", NS)] == ["d2"]


def test_s65_tag_filter_without_direction_matches_either_way(pkg: DialogPackage) -> None:
    body = DESK.replace(b' direction="recipient"', b"")
    for params in ({"from-tag": "rt1", "to-tag": "lt1"}, {"from-tag": "lt1", "to-tag": "rt1"}):
        root = parse(pkg.compose(ENTITY, [body], params).render(0))
        assert [d.get("id") for d in root.findall("d:dialog", NS)] == ["d1"]


def test_s65_session_description_only_when_asked(pkg: DialogPackage) -> None:
    stripped = parse(pkg.compose(ENTITY, [DESK]).render(0))
    assert stripped.findall(".//d:session-description", NS) == []
    assert stripped.findtext("d:dialog/d:remote/d:identity", namespaces=NS) == "sip:carol@example.com"
    kept = parse(pkg.compose(ENTITY, [DESK], {"include-session-description": ""}).render(0))
    assert len(kept.findall(".//d:session-description", NS)) == 2


def test_s67_version_splice_is_the_only_difference(pkg: DialogPackage) -> None:
    doc = pkg.compose(ENTITY, [DESK, SOFT])
    a, b = doc.render(9), doc.render(10)
    assert a.replace(b'version="9"', b'version="10"', 1) == b
    assert b'version="9"' in a and doc.body.count(b'version=""') == 1


def test_s72_two_phones_with_the_same_dialog_id_both_show(pkg: DialogPackage) -> None:
    """Phones often number dialogs from 1: both must reach SLA watchers."""
    phone_a = DESK
    phone_b = DESK.replace(b"c1-bench@192.0.2.1", b"other-call@192.0.2.9")
    root = parse(pkg.compose(ENTITY, [phone_a, phone_b]).render(0))
    dialogs = root.findall("d:dialog", NS)
    assert sorted(d.get("call-id") for d in dialogs) == ["c1-bench@192.0.2.1", "other-call@192.0.2.9"]
    ids = [d.get("id") for d in dialogs]
    assert len(set(ids)) == 2 and ids[0] == "d1"


def one_dialog(n: int) -> bytes:
    """Phone ``n`` in a call whose dialog it numbered 1, like every other phone."""
    return (
        f'<dialog-info xmlns="{DI}" version="0" state="full" entity="{ENTITY}">'
        f'<dialog id="1" call-id="call-{n}"><state>confirmed</state></dialog></dialog-info>'
    ).encode()


def test_s72_thousands_of_one_dialog_id_renamed_in_linear_time(pkg: DialogPackage) -> None:
    """Distinct dialogs sharing an id keep unique ids in order, and 4x the
    dialogs cost about 4x (the probe from ``-2`` upwards was quadratic)."""
    bodies = [one_dialog(n) for n in range(8000)]
    root = parse(pkg.compose(ENTITY, bodies).render(1))
    assert [d.get("id") for d in root] == ["1"] + [f"1-{n}" for n in range(2, 8001)]

    def seconds(some: list[bytes]) -> float:
        started = time.process_time()
        pkg.compose(ENTITY, some)
        return time.process_time() - started

    small = min(seconds(bodies[:2000]) for _ in range(3))
    large = min(seconds(bodies) for _ in range(3))
    assert large < 10 * small, f"2000: {small * 1000:.0f} ms, 8000: {large * 1000:.0f} ms"


# What composition produced before #12, byte for byte (see
# test_packages_presence.py).
COMPOSED_DESK_SOFT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" xmlns:sa="urn:ietf:params:xml:ns:sa-dialog-info" version="" state="full" entity="sip:200@example.com">\n'
    b'<dialog id="d1" call-id="c1-bench@192.0.2.1" local-tag="lt1" remote-tag="rt1" direction="recipient">\n'
    b'<state>confirmed</state>\n'
    b'<duration>42</duration>\n'
    b'<local><identity>sip:200@example.com</identity>\n'
    b'</local>\n'
    b'<remote><identity display="Carol">sip:carol@example.com</identity>\n'
    b'</remote>\n'
    b'</dialog>\n'
    b'<dialog id="d2" call-id="c2@198.51.100.7" local-tag="ft2" direction="initiator">\n'
    b'<sa:appearance>1</sa:appearance>\n'
    b'<state>early</state>\n'
    b'<remote><identity>sip:dave@example.com</identity></remote>\n'
    b'</dialog>\n'
    b'</dialog-info>\n'
)


def test_s66_composed_document_byte_for_byte(pkg: DialogPackage) -> None:
    assert pkg.compose(ENTITY, [DESK, SOFT]).render(7) == COMPOSED_DESK_SOFT.replace(b'version=""', b'version="7"')


def wide_dialog_info(prefixes: int, dialogs: int) -> bytes:
    """``prefixes`` bindings on the root above ``dialogs`` small dialogs."""
    decls = "".join(f' xmlns:p{i}="urn:example:ns{i}"' for i in range(prefixes))
    inner = "".join(f'<dialog id="d{n}"><state>early</state><p{n % prefixes}:x/></dialog>' for n in range(dialogs))
    return f'<dialog-info xmlns="{DI}"{decls} version="0" state="full" entity="{ENTITY}">{inner}</dialog-info>'.encode()


def test_s66_composition_cost_is_linear_in_the_body_size(pkg: DialogPackage) -> None:
    """4x the prefixes over 4x the dialogs (a 4x body) costs about 4x, not
    the 16x and more of serialising each dialog with every binding in scope
    (issue #12 item 1); prefixes stay as published."""
    small, large = wide_dialog_info(32, 500), wide_dialog_info(128, 2000)

    def seconds(body: bytes) -> float:
        started = time.process_time()
        pkg.compose(ENTITY, [body])
        return time.process_time() - started

    cost_small = min(seconds(small) for _ in range(3))
    cost_large = min(seconds(large) for _ in range(3))
    assert cost_large < 12 * cost_small, f"1x {cost_small * 1000:.1f} ms, 4x {cost_large * 1000:.1f} ms"
    root = parse(pkg.compose(ENTITY, [large]).render(1))
    assert len(root) == 2000 and root[5][1].prefix == "p5"


def test_s68_unknown_state_value_passes_through(pkg: DialogPackage) -> None:
    """RFC 4235's schema types ``<state>`` as a string, and RFC 7463's own
    examples use values outside the five (#17.5): such a dialog is kept as
    published, not refused."""
    body = DESK.replace(b"<state>confirmed</state>", b'<state event="x-hold">held</state>')
    assert pkg.check_publication(body, CTYPE) == body
    root = parse(pkg.compose(ENTITY, [body]).render(0))
    state = root.find("d:dialog/d:state", NS)
    assert (state.text, state.get("event")) == ("held", "x-hold")


def test_s68_remote_identity_and_target_kept_for_pickup(pkg: DialogPackage) -> None:
    """Call pickup dials the remote target and shows the remote identity:
    both reach the watcher as published (#17.5)."""
    body = DESK.replace(
        b'<remote><identity display="Carol">sip:carol@example.com</identity>',
        b'<remote><identity display="Carol">sip:carol@example.com</identity>'
        b'<target uri="sip:carol@192.0.2.9:5060"><param pname="+sip.rendering" pval="yes"/></target>',
    ).replace(b"<local><identity>", b'<local><target uri="sip:200@192.0.2.1"/><identity>')
    root = parse(pkg.compose(ENTITY, [body]).render(0))
    remote = root.find("d:dialog/d:remote", NS)
    assert remote.find("d:identity", NS).get("display") == "Carol"
    assert remote.findtext("d:identity", namespaces=NS) == "sip:carol@example.com"
    target = remote.find("d:target", NS)
    assert target.get("uri") == "sip:carol@192.0.2.9:5060"
    assert target.find("d:param", NS).get("pname") == "+sip.rendering"
    assert root.find("d:dialog/d:local/d:target", NS).get("uri") == "sip:200@192.0.2.1"


def test_idle_placeholder_dialog_only_when_asked_and_idle() -> None:
    """Some phones light nothing until a document holds a ``<dialog>``: with
    ``idle_placeholder`` an idle document carries one terminated placeholder
    (D3 otherwise: none), and a busy document never does (#17.5)."""
    assert parse(DialogPackage().compose(ENTITY, []).render(0)).findall("d:dialog", NS) == []
    placeholder = DialogPackage(idle_placeholder=True)
    [idle] = parse(placeholder.compose(ENTITY, []).render(4)).findall("d:dialog", NS)
    assert idle.findtext("d:state", namespaces=NS) == "terminated"
    assert idle.get("id") and idle.get("call-id") is None
    filtered = parse(placeholder.compose(ENTITY, [DESK], {"call-id": "nope"}).render(0))
    assert [d.findtext("d:state", namespaces=NS) for d in filtered.findall("d:dialog", NS)] == ["terminated"]
    busy = parse(placeholder.compose(ENTITY, [DESK]).render(0))
    assert [d.get("id") for d in busy.findall("d:dialog", NS)] == ["d1"]
