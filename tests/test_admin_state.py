"""State pushed from backends through the admin API (#17.4): a PBX sets or
clears a presentity's state for any publishable package with the same
validation, entity tags and expiry as a SIP PUBLISH (RFC 3903 §6), and the
watchers are notified as for a PUBLISH."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from bodies import DIALOG_TYPE, dialog, dialog_info, pidf, publications, xml
from conftest import SECRET
from presence_node.storage.postgres import PostgresStorage

AUTH = {"Authorization": f"Bearer {SECRET}"}
MWI = "application/simple-message-summary"
PIDF = "application/pidf+xml"
ALICE = "sip:alice@example.com"
WAITING = b"Messages-Waiting: yes\r\nVoice-Message: 3/1\r\n"


def state_url(node, aor: str, event: str, query: str = "") -> str:
    return f"http://127.0.0.1:{node.admin_port}/presentities/{quote(aor, safe='@:')}/{quote(event, safe='')}{query}"


async def put(http, node, aor, event, body: bytes, ctype: str, *, etag: str | None = None, query: str = "",
              headers: dict[str, str] | None = None):
    h = dict(AUTH if headers is None else headers, **{"Content-Type": ctype})
    if etag:
        h["If-Match"] = etag
    async with http.put(state_url(node, aor, event, query), data=body, headers=h) as r:
        return r.status, r.headers.copy(), await r.json()


async def delete(http, node, aor, event, etag: str | None):
    h = dict(AUTH, **({"If-Match": etag} if etag else {}))
    async with http.delete(state_url(node, aor, event), headers=h) as r:
        return r.status, await r.json()


async def watch(make_client, event: str, target=None):
    w = await make_client("watcher", target=target)
    resp, d = await w.subscribe(ALICE, event=event)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    return w, d


async def test_pushed_mwi_reaches_the_phone_and_is_listed(http, node, make_client):
    phone, d = await watch(make_client, "message-summary")
    status, headers, got = await put(http, node, "alice@example.com", "message-summary", WAITING, MWI)
    assert status == 200, got
    assert got["presentity"] == "alice@example.com" and got["event"] == "message-summary"
    assert headers["ETag"] == f'"{got["etag"]}"' and got["expires"] == 3600
    [_, n] = await phone.dialog_notifies(d, 2)
    assert n.body == WAITING
    [pub] = await publications(node, "message-summary")
    assert pub.etag == got["etag"] and pub.body == WAITING


async def test_modify_and_clear_follow_publish_etags(http, node, make_client):
    """If-Match names the publication to modify (new etag each time) or to
    clear; an etag already replaced is 412, as SIP-If-Match is (S39)."""
    w, d = await watch(make_client, "presence")
    _, _, first = await put(http, node, ALICE, "presence", pidf(ALICE, "open", note="in"), PIDF, query="?expires=600")
    assert first["expires"] == 600
    status, _, second = await put(http, node, ALICE, "presence", pidf(ALICE, "closed", note="out"), PIDF,
                                  etag=first["etag"])
    assert status == 200 and second["etag"] != first["etag"]
    [_, _, n] = await w.dialog_notifies(d, 3)
    assert b"out" in n.body
    status, _, stale = await put(http, node, ALICE, "presence", pidf(ALICE, "open"), PIDF, etag=first["etag"])
    assert status == 412 and "entity-tag" in stale["error"]
    assert (await delete(http, node, ALICE, "presence", first["etag"]))[0] == 412
    status, cleared = await delete(http, node, ALICE, "presence", second["etag"])
    assert status == 200 and cleared["etag"] == second["etag"]
    [*_, offline] = await w.dialog_notifies(d, 4)
    assert xml(offline).findtext(".//{urn:ietf:params:xml:ns:pidf}basic") == "closed"
    assert await publications(node) == []


async def test_pushed_dialog_state_uses_the_dialog_package(http, node, make_client):
    w, d = await watch(make_client, "dialog")
    status, _, _ = await put(http, node, ALICE, "dialog", dialog_info(ALICE, dialog("d1", "early")), DIALOG_TYPE)
    assert status == 200
    [_, n] = await w.dialog_notifies(d, 2)
    assert b">early</state>" in n.body


@pytest.mark.parametrize(
    ("aor", "event", "body", "ctype", "query", "status", "words"),
    [
        ("alice@example.com", "message-summary", b"Voice-Message: 1/0\r\n", MWI, "", 400, "Messages-Waiting"),
        ("alice@example.com", "presence", b"<presence", PIDF, "", 400, "XML"),
        ("alice@example.com", "presence", WAITING, MWI, "", 415, "not a presence document"),
        ("alice@example.com", "message-summary", b"", MWI, "", 400, "body"),
        ("alice@example.com", "presence.winfo", b"x", "application/watcherinfo+xml", "", 404, "package"),
        ("alice@example.com", "no-such", WAITING, MWI, "", 404, "package"),
        ("alice@example.com", "message-summary", WAITING, MWI, "?expires=0", 400, "DELETE"),
        ("alice@example.com", "message-summary", WAITING, MWI, "?expires=soon", 400, "expires"),
        ("alice@example.com", "message-summary", WAITING, MWI, "?colour=red", 400, "colour"),
        ("tel:+15551234", "message-summary", WAITING, MWI, "", 400, "scheme"),
        ("nobody", "message-summary", WAITING, MWI, "", 404, "resource"),
    ],
)
async def test_bad_pushes_are_refused_as_json_and_store_nothing(http, node, aor, event, body, ctype, query, status,
                                                                words):
    got_status, _, got = await put(http, node, aor, event, body, ctype, query=query)
    assert got_status == status, got
    assert words.lower() in got["error"].lower()
    assert await publications(node) == []


async def test_expiry_bounds_are_the_publish_ones(http, make_node):
    """Below ``publication_expiry.min``: refused naming the minimum (423 in
    SIP); above the maximum: granted the maximum (D10)."""
    n = await make_node(publication_expiry={"min": 60, "default": 600, "max": 900})
    status, _, got = await put(http, n, ALICE, "message-summary", WAITING, MWI, query="?expires=59")
    assert status == 400 and "brief" in got["error"] and got["min_expires"] == 60
    status, _, got = await put(http, n, ALICE, "message-summary", WAITING, MWI, query="?expires=7200")
    assert status == 200 and got["expires"] == 900
    [pub] = await publications(n)
    assert 890 < pub.expires_at - time.time() <= 900


async def test_unserved_domain_is_404(http, make_node):
    n = await make_node(domains=["example.com"])
    status, _, got = await put(http, n, "bob@elsewhere.org", "message-summary", WAITING, MWI)
    assert status == 404 and "elsewhere.org" in got["error"]


async def test_push_needs_the_bearer_secret(http, node):
    status, _, got = await put(http, node, ALICE, "message-summary", WAITING, MWI, headers={})
    assert status == 401 and "error" in got
    assert await publications(node) == []


async def test_delete_needs_if_match(http, node):
    status, got = await delete(http, node, ALICE, "presence", None)
    assert status == 400 and "If-Match" in got["error"]


async def test_pushed_state_on_one_node_reaches_a_watcher_of_another(http, make_node, make_client, pg_dsn):
    """Shared database: what a backend pushes through any node is the
    cluster's state, as a PUBLISH through that node would be."""
    a, b = [await make_node(node_id=f"n{i}", cluster_id="c1", sharing_tags={"vip": s},
                            cluster_pres_events=["presence", "message-summary"],
                            storage_override=PostgresStorage(pg_dsn))
            for i, s in ((1, "active"), (2, "backup"))]
    phone, d = await watch(make_client, "message-summary", target=b)
    status, _, _ = await put(http, a, ALICE, "message-summary", WAITING, MWI)
    assert status == 200
    [_, n] = await phone.dialog_notifies(d, 2)
    assert n.body == WAITING
