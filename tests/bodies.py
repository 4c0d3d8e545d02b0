"""Bodies and small readers shared by the over-the-wire conformance tests
(test_publish, test_presence, test_winfo, test_dialog, test_hostile_xml).

Builders write the documents real clients send; readers parse what the node
sends back with lxml, so tests check structure rather than strings.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from lxml import etree

from presence_node.sip.message import Request, Response

PIDF_NS = "urn:ietf:params:xml:ns:pidf"
DM_NS = "urn:ietf:params:xml:ns:pidf:data-model"
RPID_NS = "urn:ietf:params:xml:ns:pidf:rpid"
PIDFONLINE_NS = "http://www.linphone.org/xsds/pidfonline.xsd"
DI_NS = "urn:ietf:params:xml:ns:dialog-info"
WI_NS = "urn:ietf:params:xml:ns:watcherinfo"
NS = {"p": PIDF_NS, "dm": DM_NS, "rpid": RPID_NS, "lo": PIDFONLINE_NS, "d": DI_NS, "w": WI_NS}

PIDF_TYPE = "application/pidf+xml"
DIALOG_TYPE = "application/dialog-info+xml"
WINFO_TYPE = "application/watcherinfo+xml"


def pidf(entity: str = "sip:bob@example.com", basic: str = "open", *, tuple_id: str = "t1", note: str | None = None,
         contact: str | None = None) -> bytes:
    """A minimal PIDF document with one tuple (and an optional note/contact)."""
    inner = f"<status><basic>{basic}</basic></status>"
    if contact:
        inner += f"<contact>{contact}</contact>"
    if note:
        inner += f"<note>{note}</note>"
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="{PIDF_NS}" entity="{entity}">\n'
        f'<tuple id="{tuple_id}">{inner}</tuple>\n</presence>\n'
    ).encode()


def dialog(dialog_id: str, state: str = "confirmed", *, call_id: str | None = None, local_tag: str | None = None,
           remote_tag: str | None = None, direction: str | None = None, state_event: str | None = None,
           code: int | None = None, inner: str = "") -> str:
    attrs = f' id="{dialog_id}"'
    for name, value in (("call-id", call_id), ("local-tag", local_tag), ("remote-tag", remote_tag),
                        ("direction", direction)):
        if value is not None:
            attrs += f' {name}="{value}"'
    st = ""
    if state_event is not None:
        st += f' event="{state_event}"'
    if code is not None:
        st += f' code="{code}"'
    return f"<dialog{attrs}><state{st}>{state}</state>{inner}</dialog>"


def dialog_info(entity: str = "sip:bob@example.com", *dialogs: str, version: int = 0) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<dialog-info xmlns="{DI_NS}" version="{version}" state="full" entity="{entity}">\n'
        + "\n".join(dialogs)
        + "\n</dialog-info>\n"
    ).encode()


def xml(msg: Request | Response) -> etree._Element:
    """The body of ``msg`` parsed strictly (no entities, no network)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(msg.body, parser)


def basics(root: etree._Element) -> list[str]:
    return [(b.text or "").strip() for b in root.iterfind("p:tuple/p:status/p:basic", NS)]


def one(resp: Response, header: str) -> str:
    """The single value of ``header``; fails if it is absent or repeated."""
    lines = resp.headers.lines(header)
    assert len(lines) == 1, f"{header}: {lines!r}"
    return lines[0].strip()


def etag_of(resp: Response) -> str:
    assert resp.code == 200, f"{resp.code} {resp.reason}"
    return one(resp, "sip-etag")


def cseq_no(msg: Request) -> int:
    return int((msg.headers.get("cseq") or "0").split()[0])


async def publications(node, event: str | None = None):  # type: ignore[no-untyped-def]
    """The node's live publications, through its storage listing."""
    return await node.storage.list_presentities(node.clock(), event=event, offset=0, limit=1000)


async def eventually(check: Callable[[], bool] | Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll ``check`` until it is true (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def baresip_away(user: str) -> bytes:
    """What baresip publishes when away: person first, the RPID activity that
    baresip itself matches literally (S54)."""
    return ('''<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf"
    xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
    xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
    entity="sip:{user}@example.com">
  <dm:person id="p4159">
    <rpid:activities><rpid:away/></rpid:activities>
  </dm:person>
  <tuple id="t4109">
    <status>
      <basic>open</basic>
    </status>
    <contact>sip:{user}@192.0.2.10:5060</contact>
  </tuple>
</presence>
''').replace("{user}", user).encode()


def baresip_unknown(user: str) -> bytes:
    """baresip 1.0.0 on start-up: a schema-invalid <basic> (S51, D8)."""
    return baresip_away(user).replace(b"<basic>open</basic>", b"<basic>unknown</basic>")


def linphone(user: str) -> bytes:
    """linphone: a vendor element inside <status>, a person on the phone."""
    return ('''<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" \
xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" \
xmlns:pidfonline="http://www.linphone.org/xsds/pidfonline.xsd" entity="sip:{user}@example.com">
  <tuple id="qmtt3h">
    <status>
      <basic>open</basic>
      <pidfonline:online/>
    </status>
    <contact>sip:{user}@198.51.100.7:5062</contact>
    <timestamp>2024-05-01T10:00:00Z</timestamp>
  </tuple>
  <dm:person id="mdl7rn">
    <rpid:activities><rpid:on-the-phone/></rpid:activities>
    <dm:note>Café</dm:note>
  </dm:person>
</presence>
''').replace("{user}", user).encode()


def pjsua(user: str, *, basic: str = "open", tuple_id: str = "pj0a1b2c3", timestamp: str | None = None) -> bytes:
    """What pjsua publishes for a desk phone: a tuple with its deviceID, a
    presence-level note, a person (busy) and a device element."""
    stamp = f"\n  <timestamp>{timestamp}</timestamp>" if timestamp else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<presence entity="sip:{user}@example.com" xmlns="urn:ietf:params:xml:ns:pidf" \
xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid">
 <tuple id="{tuple_id}">
  <status>
   <basic>{basic}</basic>
  </status>
  <dm:deviceID>urn:uuid:d27459b7-8213-4395-aa77-ed859a3e5b3a</dm:deviceID>{stamp}
  <note>Idle</note>
 </tuple>
 <note>Desk phone</note>
 <dm:person id="pj4d5e6f">
  <rpid:activities>
   <rpid:busy />
  </rpid:activities>
 </dm:person>
 <dm:device id="dev1">
  <dm:deviceID>urn:uuid:d27459b7-8213-4395-aa77-ed859a3e5b3a</dm:deviceID>
 </dm:device>
</presence>
""".encode()
