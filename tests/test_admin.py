"""The admin HTTP API: open probes, bearer secret, listings with filters and
paging, strict query parameters, and metrics that match what was done."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from bodies import DIALOG_TYPE, dialog, dialog_info, etag_of, pidf
from conftest import SECRET
from wire import admin_url as url, Samples, parse_metrics

AUTH = {"Authorization": f"Bearer {SECRET}"}


async def get_json(http, node, path: str, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    async with http.get(url(node, path), headers=AUTH if headers is None else headers) as r:
        assert r.status == status, await r.text()
        assert r.content_type == "application/json"
        return await r.json()


async def metrics(http, node) -> Samples:
    async with http.get(url(node, "/metrics"), headers=AUTH) as r:
        assert r.status == 200
        return parse_metrics(await r.text())


async def test_healthz_and_readyz_are_open(http, node):
    for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
        body = await get_json(http, node, path, headers={})
        assert body["status"] == status
        assert body["node"] == node.config.node_id


async def test_readyz_is_503_once_stopping(make_node, http):
    n = await make_node()
    assert (await get_json(http, n, "/readyz", headers={}))["status"] == "ready"
    n.ready = False  # what stop() does first; the listener is still up here
    body = await get_json(http, n, "/readyz", 503, headers={})
    assert body["error"]


@pytest.mark.parametrize("path", ["/presentities", "/subscriptions", "/metrics"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-secret-0123456789"}, {"Authorization": f"Basic {SECRET}"},
     {"Authorization": SECRET}, {"Authorization": f"Bearer {SECRET}x"}],
    ids=["none", "wrong", "basic", "bare", "longer"],
)
async def test_protected_paths_need_the_bearer_secret(http, node, path, headers):
    async with http.get(url(node, path), headers=headers) as r:
        assert r.status == 401
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert "error" in await r.json()
    async with http.get(url(node, path), headers=AUTH) as r:
        assert r.status == 200


async def test_presentities_listing_and_event_filter(http, node, make_client):
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf(), expires=600))
    etag_of(await bob.publish(dialog_info("sip:bob@example.com", dialog("d1")), event="dialog", ctype=DIALOG_TYPE))
    body = await get_json(http, node, "/presentities")
    assert body["offset"] == 0 and body["limit"] == 100
    assert sorted((i["presentity"], i["event"]) for i in body["items"]) == [
        ("bob@example.com", "dialog"), ("bob@example.com", "presence")]
    [p] = (await get_json(http, node, "/presentities?event=presence"))["items"]
    assert p["etag"] == tag and p["content_type"] == "application/pidf+xml"
    assert 590 <= p["expires_in"] <= 600
    assert (await get_json(http, node, "/presentities?event=dialog%3Bsla"))["items"] == []
    # A removal is visible at once.
    assert (await bob.publish(None, etag=tag, expires=0)).code == 200
    assert (await get_json(http, node, "/presentities?event=presence"))["items"] == []


async def test_subscriptions_filters_and_paging(http, node, make_client):
    expect = []
    for watcher, target, event in (
        ("alice", "bob", "presence"), ("carol", "bob", "presence"), ("alice", "dave", "presence"),
        ("alice", "bob", "dialog"), ("bob", "bob", "presence.winfo"),
    ):
        c = await make_client(watcher)
        resp, _ = await c.subscribe(f"sip:{target}@example.com", event=event, expires=900)
        assert resp.code == 200
        expect.append((f"{watcher}@example.com", f"{target}@example.com", event))
    items = (await get_json(http, node, "/subscriptions"))["items"]
    assert sorted((i["watcher"], i["presentity"], i["event"]) for i in items) == sorted(expect)
    assert all(i["status"] == "active" and 890 <= i["expires_in"] <= 900 for i in items)

    def pick(q: str) -> Any:
        return get_json(http, node, f"/subscriptions?{q}")

    got = (await pick("presentity=bob@example.com"))["items"]
    assert sorted((i["watcher"], i["event"]) for i in got) == [
        ("alice@example.com", "dialog"), ("alice@example.com", "presence"), ("bob@example.com", "presence.winfo"),
        ("carol@example.com", "presence")]
    got = (await pick("watcher=alice@example.com"))["items"]
    assert sorted((i["presentity"], i["event"]) for i in got) == [
        ("bob@example.com", "dialog"), ("bob@example.com", "presence"), ("dave@example.com", "presence")]
    got = (await pick("event=presence&presentity=bob@example.com&watcher=carol@example.com"))["items"]
    assert [i["watcher"] for i in got] == ["carol@example.com"]
    assert (await pick("event=dialog%3Bsla"))["items"] == []
    # Paging: pages of 2 cover every row once, in a stable order.
    pages = [await pick(f"offset={o}&limit=2") for o in (0, 2, 4, 6)]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert [(p["offset"], p["limit"]) for p in pages] == [(0, 2), (2, 2), (4, 2), (6, 2)]
    paged = [i["id"] for p in pages for i in p["items"]]
    assert paged == [i["id"] for i in (await pick("limit=1000"))["items"]]
    assert len(set(paged)) == 5


@pytest.mark.parametrize("path", ["/presentities", "/subscriptions"])
@pytest.mark.parametrize(
    ("query", "name"),
    [("limit=abc", "limit"), ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=-1", "limit"),
     ("offset=-3", "offset"), ("offset=x", "offset"), ("offset=1.5", "offset"),
     ("offset=%C2%B2", "offset"), ("limit=%D9%A3", "limit"),  # "²" and Arabic-Indic 3: not ASCII digits
     ("bogus=1", "bogus"), ("limit=5&colour=red", "colour")],
)
async def test_bad_query_parameters_get_400_naming_them(http, node, path, query, name):
    body = await get_json(http, node, f"{path}?{query}", 400)
    assert name in body["error"]


async def test_presentities_takes_no_watcher_filter(http, node):
    body = await get_json(http, node, "/presentities?watcher=alice@example.com", 400)
    assert "watcher" in body["error"]


async def test_metrics_match_what_was_done(http, node, make_client):
    before = await metrics(http, node)
    bob = await make_client("bob")
    tag = etag_of(await bob.publish(pidf()))
    assert (await bob.publish(None, etag="nope")).code == 412
    assert (await bob.publish(pidf(), event="nope")).code == 489
    watchers = []
    for user in ("alice", "carol"):
        w = await make_client(user)
        resp, d = await w.subscribe("sip:bob@example.com")
        assert resp.code == 200
        await w.dialog_notifies(d, 1)
        watchers.append((w, d))
    etag_of(await bob.publish(pidf(basic="closed"), etag=tag))
    for w, d in watchers:
        await w.dialog_notifies(d, 2)
    for w, _ in watchers:
        await w.round_trip()  # its NOTIFY 200s reached the node first
    m = await metrics(http, node)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return m.get(key, 0.0) - before.get(key, 0.0)

    assert delta("sip_requests_total", method="PUBLISH") == 4
    assert delta("sip_requests_total", method="SUBSCRIBE") == 2
    assert delta("sip_responses_total", method="PUBLISH", code="200") == 2
    assert delta("sip_responses_total", method="PUBLISH", code="412") == 1
    assert delta("sip_responses_total", method="PUBLISH", code="489") == 1
    assert delta("sip_responses_total", method="SUBSCRIBE", code="200") == 2
    assert delta("sip_notify_sent_total", event="presence") == 4
    assert m[("presence_subscriptions", ())] == 2
    assert m[("presence_presentities", ())] == 1
    assert delta("sip_processing_seconds_count", method="PUBLISH") == 4
    assert delta("sip_processing_seconds_count", method="SUBSCRIBE") == 2
    assert delta("sip_processing_seconds_bucket", method="SUBSCRIBE", le="+Inf") == 2
    assert delta("sip_processing_seconds_sum", method="PUBLISH") > 0
    assert delta("presence_publication_changes_total", event="presence", kind="new") == 1
    assert delta("presence_publication_changes_total", event="presence", kind="modify") == 1


async def raw_http(node, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (a client library would refuse or
    re-encode what these tests send), the connection closed after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.admin_port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("token", ["é".encode(), "é".encode("latin-1"), b"\xff\xfe", "秘密".encode()],
                         ids=["utf8", "latin1", "invalid-utf8", "cjk"])
async def test_non_ascii_bearer_token_is_401_json(node, token):
    status, headers, body = await raw_http(
        node, b"GET /presentities HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"
    )
    assert status == 401, body
    assert headers["content-type"].startswith("application/json")
    assert "error" in json.loads(body)


@pytest.mark.parametrize("path", ["/presentities", "/subscriptions"])
@pytest.mark.parametrize("query", ["limit=" + "1" * 4301, "offset=" + "9" * 5000, "limit=" + "0" * 4000 + "5"])
async def test_huge_numeric_query_parameter_is_400(http, node, path, query):
    body = await get_json(http, node, f"{path}?{query}", 400)
    assert query.split("=")[0] in body["error"]


async def test_unknown_parameter_names_are_quoted_as_json(http, node):
    body = await get_json(http, node, '/presentities?a%22b%5C=1', 400)
    assert 'a"b\\' in body["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "data"),
    [("GET", "/nope", 404, None), ("DELETE", "/presentities", 405, None), ("GET", "/tags/x/activate", 405, None),
     ("POST", "/tags/x/activate", 413, b"{" + b" " * 70_000 + b"}")],
    ids=["404", "405", "405-post-only", "413"],
)
async def test_aiohttp_errors_are_json(http, node, method, path, status, data):
    async with http.request(method, url(node, path), headers=AUTH, data=data) as r:
        assert r.status == status
        assert r.content_type == "application/json"
        assert (await r.json())["error"]
        if status == 405:
            assert r.headers["Allow"]


async def test_unexpected_exception_is_500_json_and_logged(http, node, caplog):
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom-1234")

    node.storage.list_presentities = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        body = await get_json(http, node, "/presentities", 500)
    assert body == {"error": "internal error"}  # no internals in the answer
    [rec] = [r for r in caplog.records if r.exc_info and "boom-1234" in str(r.exc_info[1])]
    assert rec.levelno == logging.ERROR


@pytest.mark.parametrize(("method", "path"), [("GET", "/tags"), ("POST", "/tags/vip/activate")])
async def test_database_outage_is_503_json(http, make_node, pg_server, method, path):
    """#13.5: a storage that cannot be reached is a 503 with a reason, as
    JSON, for a statement (GET /tags) as for a transaction (activate)."""
    import psycopg

    from presence_node.storage.postgres import PostgresStorage

    dsn = pg_server.create_database()
    dbname = dsn.rsplit("dbname=", 1)[1]
    n = await make_node(storage_override=PostgresStorage(dsn, min_size=1, max_size=2),
                        cluster_id="c1", sharing_tags={"vip": "backup"})
    await get_json(http, n, "/tags")  # a connection is held and idle
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        for _ in range(100):  # the backends exit asynchronously
            if admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)).fetchone() == (0,):
                break
            await asyncio.sleep(0.05)
    async with http.request(method, url(n, path), headers=AUTH) as r:
        assert r.status == 503, await r.text()
        assert r.content_type == "application/json"
        assert "storage unavailable" in (await r.json())["error"]
