"""Bounds on live state (#12 "Hostile network", items 2, 6 and 7), over real
sockets: publications per presentity and package, node-wide counts of
presentities, publications, subscriptions and registrations (503 with
Retry-After) and live records per source IP (403), each refused with a
reason phrase before anything is stored; and REGISTER bindings that are
freed when they expire and listed by the admin API."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from conftest import SECRET
from sipclient import SipClient
from wire import expire, parse_metrics, pidf, publications, snapshot

AUTH = {"Authorization": f"Bearer {SECRET}"}
FAST_REG = {"registration_expiry": {"min": 1, "default": 3600, "max": 7200}}


async def client(node, user: str, host: str = "127.0.0.1", open_clients=None) -> SipClient:
    c = await SipClient(("127.0.0.1", node.sip_port), user=user, local_host=host).open()
    if open_clients is not None:
        open_clients.append(c)
    return c


async def register(c: SipClient, aor_user: str, contact: str, expires: int = 3600):
    hs = [("Contact", f"<{contact}>"), ("Expires", str(expires))]
    return await c.request(c.build("REGISTER", "sip:example.com", hs, to=f"sip:{aor_user}@example.com", with_contact=False))


async def scrape(node) -> dict:
    return parse_metrics((await node.metrics_text()).decode())


def refused(samples: dict, limit: str) -> float:
    return samples.get(("presence_limit_refused_total", (("limit", limit),)), 0.0)


async def test_publications_of_one_presentity_are_capped_with_403(make_node, open_clients):
    node = await make_node(limits={"max_publications_per_presentity": 3})
    c = await client(node, "bob", open_clients=open_clients)
    etags = []
    for _ in range(3):
        resp = await c.publish(pidf("bob"))
        assert resp.code == 200
        etags.append(resp.headers.get("sip-etag"))
    before = await snapshot(node)
    resp = await c.publish(pidf("bob"))
    assert resp.code == 403 and "publications" in resp.reason, resp.reason
    assert await snapshot(node) == before  # refused before anything is stored
    # A refresh or modify of a held publication, and other presentities, go on.
    assert (await c.publish(None, etag=etags[0])).code == 200
    assert (await c.publish(pidf("carol"), uri="sip:carol@example.com")).code == 200
    assert refused(await scrape(node), "max_publications_per_presentity") == 1


async def test_node_wide_publication_cap_answers_503_with_retry_after(make_node, open_clients):
    node = await make_node(limits={"max_publications": 2})
    c = await client(node, "bob", open_clients=open_clients)
    for user in ("p1", "p2"):
        assert (await c.publish(pidf(user), uri=f"sip:{user}@example.com")).code == 200
    resp = await c.publish(pidf("p3"), uri="sip:p3@example.com")
    assert resp.code == 503 and resp.headers.get("retry-after") and "publications" in resp.reason, resp.reason
    assert [p.presentity for p in await publications(node)] == ["p1@example.com", "p2@example.com"]
    samples = await scrape(node)
    assert refused(samples, "max_publications") == 1
    assert samples[("presence_live_records", (("kind", "publications"),))] == 2


async def test_node_wide_presentity_cap_answers_503(make_node, open_clients):
    node = await make_node(limits={"max_presentities": 1})
    c = await client(node, "bob", open_clients=open_clients)
    assert (await c.publish(pidf("p1"), uri="sip:p1@example.com")).code == 200
    resp = await c.publish(pidf("p2"), uri="sip:p2@example.com")
    assert resp.code == 503 and resp.headers.get("retry-after") and "presentities" in resp.reason, resp.reason
    assert refused(await scrape(node), "max_presentities") == 1


async def test_node_wide_subscription_cap_answers_503_and_refreshes_go_on(make_node, open_clients):
    node = await make_node(limits={"max_subscriptions": 2})
    c = await client(node, "alice", open_clients=open_clients)
    dialogs = []
    for user in ("p1", "p2"):
        resp, d = await c.subscribe(f"sip:{user}@example.com")
        assert resp.code == 200
        dialogs.append(d)
    before = await snapshot(node)
    resp, _ = await c.subscribe("sip:p3@example.com")
    assert resp.code == 503 and resp.headers.get("retry-after") and "subscriptions" in resp.reason, resp.reason
    assert await snapshot(node) == before
    assert (await c.resubscribe(dialogs[0], 600)).code == 200
    # One gone: room for a new one.
    assert (await c.resubscribe(dialogs[1], 0)).code == 200
    assert (await c.subscribe("sip:p3@example.com"))[0].code == 200
    assert refused(await scrape(node), "max_subscriptions") == 1


async def test_node_wide_registration_cap_answers_503_and_refreshes_go_on(make_node, open_clients):
    node = await make_node(limits={"max_registrations": 2})
    c = await client(node, "alice", open_clients=open_clients)
    assert (await register(c, "u1", "sip:u1@127.0.0.1:5999")).code == 200
    assert (await register(c, "u2", "sip:u2@127.0.0.1:5999")).code == 200
    resp = await register(c, "u3", "sip:u3@127.0.0.1:5999")
    assert resp.code == 503 and resp.headers.get("retry-after") and "registrations" in resp.reason, resp.reason
    assert (await register(c, "u1", "sip:u1@127.0.0.1:5999", 1800)).code == 200  # a refresh
    assert await node.storage.bindings("u3@example.com", 0) == []
    assert refused(await scrape(node), "max_registrations") == 1


async def test_per_source_cap_answers_403_and_other_sources_go_on(make_node, open_clients):
    node = await make_node(limits={"max_records_per_source": 3})
    flood = await client(node, "alice", "127.0.0.1", open_clients)
    other = await client(node, "carol", "127.0.0.2", open_clients)
    assert (await flood.publish(pidf("alice"))).code == 200
    resp, d = await flood.subscribe("sip:p1@example.com")
    assert resp.code == 200
    assert (await register(flood, "alice", "sip:alice@127.0.0.1:5999")).code == 200
    before = await snapshot(node)
    for attempt in (
        flood.publish(pidf("x"), uri="sip:x@example.com"),
        flood.subscribe("sip:p2@example.com"),
        register(flood, "bob", "sip:bob@127.0.0.1:5999"),
    ):
        got = await attempt
        resp = got[0] if isinstance(got, tuple) else got
        assert resp.code == 403 and "127.0.0.1" in resp.reason, resp.reason
    assert await snapshot(node) == before
    assert (await other.subscribe("sip:p2@example.com"))[0].code == 200
    # A record that goes frees its source's share.
    assert (await flood.resubscribe(d, 0)).code == 200
    assert (await flood.subscribe("sip:p3@example.com"))[0].code == 200
    assert refused(await scrape(node), "max_records_per_source") == 3


async def test_per_source_share_is_freed_by_expiry(make_node, open_clients, clock):
    node = await make_node(limits={"max_records_per_source": 2}, **FAST_REG)
    c = await client(node, "alice", open_clients=open_clients)
    assert (await c.publish(pidf("alice"), expires=1)).code == 200
    assert (await register(c, "alice", "sip:alice@127.0.0.1:5999", 1)).code == 200
    assert (await c.publish(pidf("x"), uri="sip:x@example.com")).code == 403
    await expire(node, clock, 1.1)  # both expire
    assert (await c.publish(pidf("x"), uri="sip:x@example.com")).code == 200


async def test_expired_registrations_are_pruned_by_the_sweep(make_node, open_clients, clock):
    node = await make_node(**FAST_REG)
    c = await client(node, "alice", open_clients=open_clients)
    for i in range(5):
        assert (await register(c, f"u{i}", f"sip:u{i}@127.0.0.1:5999", 1)).code == 200
    assert (await register(c, "kept", "sip:kept@127.0.0.1:5999", 3600)).code == 200
    assert (await scrape(node))[("presence_live_records", (("kind", "registrations"),))] == 6
    await expire(node, clock, 1.1)
    # Freed without anyone asking for those AORs again.
    samples = await scrape(node)
    assert samples[("presence_live_records", (("kind", "registrations"),))] == 1
    assert samples[("presence_expired_total", (("kind", "registration"),))] == 5


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_admin_lists_registrations_paged_and_filtered_by_aor(make_node, open_clients, http):
    node = await make_node()
    c = await client(node, "alice", open_clients=open_clients)
    for i in range(3):
        assert (await register(c, f"u{i}", f"sip:u{i}@127.0.0.1:5999")).code == 200
    assert (await register(c, "u1", "sip:u1@127.0.0.1:6000", 600)).code == 200
    base = f"http://127.0.0.1:{node.admin_port}/registrations"
    async with http.get(f"{base}?offset=1&limit=2", headers=AUTH) as r:
        assert r.status == 200
        body = await r.json()
    assert [(i["aor"], i["contact"]) for i in body["items"]] == [
        ("u1@example.com", "sip:u1@127.0.0.1:5999"),
        ("u1@example.com", "sip:u1@127.0.0.1:6000"),
    ]
    assert body["offset"] == 1 and body["limit"] == 2
    async with http.get(f"{base}?aor=u1@example.com", headers=AUTH) as r:
        items = (await r.json())["items"]
    assert [i["contact"] for i in items] == ["sip:u1@127.0.0.1:5999", "sip:u1@127.0.0.1:6000"]
    assert 590 <= items[1]["expires_in"] <= 600 and items[1]["tag"] == "~n1"
    async with http.get(f"{base}?contact=x", headers=AUTH) as r:
        assert r.status == 400
    async with http.get(base) as r:
        assert r.status == 401


# -- a shared database ----------------------------------------------------------


@pytest.fixture
async def shared_pair(make_node, pg_dsn):
    """Two nodes on one PostgreSQL; tag ``vip`` active on the first."""
    from presence_node.storage.postgres import PostgresStorage

    async def start(**extra):
        return [
            await make_node(
                node_id=f"n{i + 1}", cluster_id="c1", sharing_tags={"vip": state},
                storage_override=PostgresStorage(pg_dsn), **extra,
            )
            for i, state in enumerate(("active", "backup"))
        ]

    return start


async def test_shared_database_caps_count_every_nodes_records(shared_pair, open_clients):
    a, b = await shared_pair(
        limits={"max_subscriptions": 2, "max_publications_per_presentity": 2, "count_refresh_interval": 0.2}
    )
    ca = await client(a, "alice", open_clients=open_clients)
    cb = await client(b, "alice", "127.0.0.2", open_clients=open_clients)
    for user in ("p1", "p2"):
        assert (await ca.subscribe(f"sip:{user}@example.com"))[0].code == 200
    assert (await ca.subscribe("sip:p3@example.com"))[0].code == 503  # its own inserts count at once
    await asyncio.sleep(0.6)  # b's next recount sees a's rows: the cap is the database's
    resp, _ = await cb.subscribe("sip:p3@example.com")
    assert resp.code == 503 and "subscriptions" in resp.reason, resp.reason
    # The per-presentity cap is counted in the PUBLISH statement: exact across nodes.
    assert (await ca.publish(pidf("bob"), uri="sip:bob@example.com")).code == 200
    assert (await cb.publish(pidf("bob"), uri="sip:bob@example.com")).code == 200
    resp = await ca.publish(pidf("bob"), uri="sip:bob@example.com")
    assert resp.code == 403 and "bob@example.com" in resp.reason, resp.reason
    assert len(await publications(a, "bob@example.com")) == 2


async def test_shared_database_bindings_are_pruned_by_their_tags_owner(shared_pair, open_clients, clock):
    a, b = await shared_pair(**FAST_REG)
    cb = await client(b, "alice", open_clients=open_clients)
    assert (await register(cb, "u1", "sip:u1@127.0.0.1:5999", 1)).code == 200
    assert (await register(cb, "u2", "sip:u2@127.0.0.1:5999", 3600)).code == 200
    await expire(a, clock, 1.1)  # the owner's sweep
    await expire(b, clock, 0)  # and the backup's
    rows = await b.storage.list_registrations(0, aor=None, offset=0, limit=10)
    assert [r.aor for r in rows] == ["u2@example.com"] and rows[0].tag == "vip"
    # The owner of vip (a) pruned it; the backup (b) did nothing.
    key = ("presence_expired_total", (("kind", "registration"),))
    assert (await scrape(a))[key] == 1 and (await scrape(b)).get(key, 0) == 0


# -- refresh floods (memory backend) ---------------------------------------------


@pytest.mark.parametrize("kind", ["publication", "subscription", "binding"])
async def test_a_refresh_flood_does_not_grow_the_memory_backend(kind):
    """Each refresh leaves a stale entry in an expiry heap; the heap is
    rebuilt once those outnumber the live records, so refreshing one record
    50,000 times holds about what one record does."""
    import tracemalloc

    from presence_node.storage import MemoryStorage, Publication, Registration
    from test_storage_contract import sub

    s = MemoryStorage()
    etag = "e0"
    if kind == "publication":
        await s.insert_publication_watched(Publication("bob@example.com", "presence", etag, b"<x/>", "t", 10.0, 0.0, "A"), 0.0)
    elif kind == "subscription":
        await s.insert_subscription(sub(1, expires=10.0))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(1, 50_001):
            if kind == "publication":
                new = f"e{i}"
                await s.replace_publication("bob@example.com", "presence", etag, 0.0, new_etag=new, expires_at=10.0 + i)
                etag = new
            elif kind == "subscription":
                await s.refresh_subscription("s1", expires_at=10.0 + i, remote_cseq=i)
            else:
                await s.set_binding(Registration("a@example.com", "sip:a@h", 10.0 + i, "c", i, "A"))
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, grown  # 50,000 stale entries would be several MB
