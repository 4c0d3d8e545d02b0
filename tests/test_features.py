"""as-feature-event (DFKS: DND and call-forward key synchronisation) end to
end: a phone SUBSCRIBEs to its own AOR, changes a feature with a
SUBSCRIBE body, gets the full state in each NOTIFY, the other phones of the
AOR are told, and the PBX's webhook hears of the change (#17.3)."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json

import pytest
from aiohttp import web
from lxml import etree

from bodies import publications
from presence_node.packages.features import CSTA_NS, FEATURE_TYPE
from presence_node.storage.postgres import PostgresStorage

EVENT = "as-feature-event"
ME = "sip:1000@example.com"
NS = {"c": CSTA_NS}


def csta(root: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<{root} xmlns="{CSTA_NS}">{inner}</{root}>'.encode()


DND_ON = csta("SetDoNotDisturb", "<device>1000</device><doNotDisturbOn>true</doNotDisturbOn>")
CFB = csta("SetForwarding", "<device>1000</device><forwardingType>forwardBusy</forwardingType>"
                            "<activateForward>true</activateForward><forwardDN>2000</forwardDN>")


def features(notify) -> dict[str, etree._Element]:
    """The feature events of a NOTIFY, by feature."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + notify.headers.get("content-type").encode() + b"\r\n\r\n" + notify.body)
    out = {}
    for part in msg.iter_parts():
        assert part.get_content_type() == FEATURE_TYPE
        root = etree.fromstring(part.get_payload(decode=True))
        out[root.findtext("c:forwardingType", namespaces=NS) or "doNotDisturb"] = root
    return out


async def phone(make_client, user: str = "1000", target=None, body: bytes = b"", transport: str = "udp"):
    c = await make_client(user, transport, target=target)
    hs = [("Event", EVENT), ("Accept", FEATURE_TYPE), ("Expires", "3600")]
    if body:
        hs.append(("Content-Type", FEATURE_TYPE))
    resp = await c.request(c.build("SUBSCRIBE", ME, hs, body, from_uri=ME))
    assert resp.code == 200, f"{resp.code} {resp.reason}"
    call_id = resp.headers.get("call-id")
    [first] = await c.wait_notifies(1, where=lambda m: m.headers.get("call-id") == call_id)
    return c, resp, first


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_first_notify_holds_every_feature_off(make_client, transport):
    _, _, first = await phone(make_client, transport=transport)
    assert first.headers.get("event") == EVENT
    assert first.headers.get("content-type").startswith("multipart/mixed")
    state = features(first)
    assert state["doNotDisturb"].findtext("c:doNotDisturbOn", namespaces=NS) == "false"
    assert {k for k in state} == {"doNotDisturb", "forwardImmediate", "forwardBusy", "forwardNoAns"}


async def test_subscribe_body_sets_dnd_and_every_phone_of_the_aor_hears(make_client, node):
    desk, _, _ = await phone(make_client)
    soft, _, first = await phone(make_client, body=DND_ON)  # a SUBSCRIBE that presses DND
    assert features(first)["doNotDisturb"].findtext("c:doNotDisturbOn", namespaces=NS) == "true"
    [_, told] = await desk.wait_notifies(2)
    assert features(told)["doNotDisturb"].findtext("c:doNotDisturbOn", namespaces=NS) == "true"
    # A refresh in the dialog with a SetForwarding body changes one more feature.
    resp = await soft.request(soft.build(
        "SUBSCRIBE", ME, [("Event", EVENT), ("Expires", "3600"), ("Content-Type", FEATURE_TYPE)], CFB,
        call_id=first.headers.get("call-id"), from_tag=_tag(first.headers.get("to")),
        to_tag=_tag(first.headers.get("from")), cseq=2, from_uri=ME))
    assert resp.code == 200
    [*_, latest] = await desk.wait_notifies(3)
    state = features(latest)
    assert state["forwardBusy"].findtext("c:forwardTo", namespaces=NS) == "2000"
    assert state["doNotDisturb"].findtext("c:doNotDisturbOn", namespaces=NS) == "true"
    assert len(await publications(node, EVENT)) == 2  # one stored state per feature


def _tag(header: str) -> str:
    return header.split(";tag=", 1)[1].split(";", 1)[0]


async def test_only_the_phone_itself_may_subscribe_or_change(make_client, node):
    """Another user could otherwise forward 1000's calls: 403, nothing stored."""
    other = await make_client("mallory")
    resp = await other.request(other.build("SUBSCRIBE", ME, [("Event", EVENT), ("Content-Type", FEATURE_TYPE)],
                                           DND_ON))
    assert resp.code == 403
    assert await publications(node, EVENT) == []


async def test_bad_feature_body_is_400_and_changes_nothing(make_client, node):
    c = await make_client("1000")
    bad = csta("SetDoNotDisturb", "<device>1000</device><doNotDisturbOn>perhaps</doNotDisturbOn>")
    resp = await c.request(c.build("SUBSCRIBE", ME, [("Event", EVENT), ("Content-Type", FEATURE_TYPE)], bad,
                                   from_uri=ME))
    assert resp.code == 400 and "true or false" in resp.reason
    assert await publications(node, EVENT) == []


async def test_a_change_calls_the_pbx_webhook(make_node, make_client, tmp_path):
    heard: asyncio.Queue = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await heard.put((request.headers.get("Authorization"), await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/features", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    secret = tmp_path / "hook-secret"
    secret.write_text("hook-secret-0123456789\n")
    try:
        n = await make_node(features={"webhook_url": f"http://127.0.0.1:{port}/features",
                                      "webhook_secret_file": str(secret)})
        await phone(make_client, target=n, body=CFB)
        auth, got = await asyncio.wait_for(heard.get(), 5)
        assert auth == "Bearer hook-secret-0123456789"
        assert got == {"aor": "1000@example.com", "device": "1000", "feature": "forwardBusy", "on": True,
                       "forward_to": "2000", "ring_count": None}
    finally:
        await runner.cleanup()


async def test_shared_database_a_change_on_one_node_reaches_a_phone_on_the_other(make_node, make_client, pg_dsn):
    a, b = [await make_node(node_id=f"n{i}", cluster_id="c1", sharing_tags={"vip": s},
                            cluster_pres_events=["presence", EVENT], storage_override=PostgresStorage(pg_dsn))
            for i, s in ((1, "active"), (2, "backup"))]
    desk, _, _ = await phone(make_client, target=b)
    await phone(make_client, target=a, body=DND_ON)
    [_, told] = await desk.wait_notifies(2)
    assert features(told)["doNotDisturb"].findtext("c:doNotDisturbOn", namespaces=NS) == "true"
