"""Resource lists (RFC 4662) end to end over real sockets: a subscriber
watches a list URI with ``Supported: eventlist`` and gets multipart/related
RLMI NOTIFYs, full state first, then partial, in memory, shared-database
and federation (full and on-demand sharing) modes; lists from configuration and the
admin API (#17.2).

RFC 4662 statements checked (README conformance table, "RLS"):
L1 (§5.1) a SUBSCRIBE to a list without ``Supported: eventlist`` → 421 with
``Require: eventlist``; L2 (§5.1) the 200 and every NOTIFY carry
``Require: eventlist``; L3 (§5.2, §5.3) the first NOTIFY and the one after a
refresh hold full state, later ones only the changed resources, with
``version`` rising by one per NOTIFY; L4 (§5.4) the body is
multipart/related with the RLMI document as its start part and one part
per instance, named by its ``cid``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy

import aiohttp
import pytest
from lxml import etree

from bodies import DIALOG_TYPE, dialog, dialog_info, etag_of, pidf
from conftest import SECRET
from presence_node.packages.rlmi import RLMI_NS
from presence_node.storage.postgres import PostgresStorage

LIST = "sip:alice-blf@example.com"
MEMBERS = ["sip:bob@example.com", "sip:carol@example.com", "sip:dave@example.com"]
LISTS = {LIST: MEMBERS}
NS = {"r": RLMI_NS}
AUTH = {"Authorization": f"Bearer {SECRET}"}


def rlmi(notify):
    """(the RLMI root, {resource uri: its part's bytes}) of a list NOTIFY (L4)."""
    ctype = notify.headers.get("content-type")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + notify.body)
    assert msg.get_content_type() == "multipart/related"
    parts = list(msg.iter_parts())
    assert parts[0]["Content-ID"] == msg.get_param("start")
    root = etree.fromstring(parts[0].get_payload(decode=True))
    by_cid = {p["Content-ID"].strip("<>"): p.get_payload(decode=True) for p in parts[1:]}
    docs = {r.get("uri"): by_cid[r.find("r:instance", NS).get("cid")] for r in root.findall("r:resource", NS)}
    assert len(by_cid) == len(docs)
    return root, docs


async def list_watch(make_client, target=None, event: str = "presence", supported: bool = True):
    w = await make_client("alice", target=target)
    extra = [("Supported", "eventlist")] if supported else []
    resp, d = await w.subscribe(LIST, event=event, extra=extra)
    return w, resp, d


async def test_l1_list_without_eventlist_is_421(make_node, make_client):
    n = await make_node(resource_lists=LISTS)
    _, resp, _ = await list_watch(make_client, n, supported=False)
    assert resp.code == 421 and resp.headers.get("require") == "eventlist"


async def test_l2_l3_l4_full_state_first_then_partial_then_full_after_refresh(make_node, make_client):
    n = await make_node(resource_lists=LISTS)
    w, resp, d = await list_watch(make_client, n)
    assert resp.code == 200 and resp.headers.get("require") == "eventlist"
    [first] = await w.dialog_notifies(d, 1)
    assert first.headers.get("require") == "eventlist"
    root, docs = rlmi(first)
    assert (root.get("uri"), root.get("version"), root.get("fullState")) == (LIST, "0", "true")
    assert list(docs) == MEMBERS
    assert all(b"<basic>closed</basic>" in body for body in docs.values())  # D3 for each member
    bob = await make_client("bob", target=n)
    etag_of(await bob.publish(pidf(MEMBERS[0], "open", note="at desk")))
    [_, second] = await w.dialog_notifies(d, 2)
    root, docs = rlmi(second)
    assert (root.get("version"), root.get("fullState")) == ("1", "false")
    assert list(docs) == [MEMBERS[0]] and b"at desk" in docs[MEMBERS[0]]
    # A refresh: the next NOTIFY holds every member again.
    resp = await w.resubscribe(d, 3600)
    assert resp.code == 200
    [*_, third] = await w.dialog_notifies(d, 3)
    root, docs = rlmi(third)
    assert (root.get("version"), root.get("fullState")) == ("2", "true")
    assert list(docs) == MEMBERS and b"at desk" in docs[MEMBERS[0]]


async def test_blf_list_of_dialog_states(make_node, make_client):
    """A Yealink "BLF list": event dialog on a list URI, one dialog-info per member."""
    n = await make_node(resource_lists=LISTS)
    w, resp, d = await list_watch(make_client, n, event="dialog")
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    carol = await make_client("carol", target=n)
    etag_of(await carol.publish(dialog_info(MEMBERS[1], dialog("d1", "early")), event="dialog",
                                ctype=DIALOG_TYPE))
    [_, n2] = await w.dialog_notifies(d, 2)
    _, docs = rlmi(n2)
    assert list(docs) == [MEMBERS[1]] and b">early</state>" in docs[MEMBERS[1]]


async def test_lists_through_the_admin_api(make_node, make_client):
    n = await make_node()
    base = f"http://127.0.0.1:{n.admin_port}/lists"
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.put(f"{base}/{LIST}", json={"members": MEMBERS[:2]}) as r:
            assert r.status == 200
            assert await r.json() == {"list": "alice-blf@example.com",
                                      "members": ["bob@example.com", "carol@example.com"]}
        w, resp, d = await list_watch(make_client, n)
        assert resp.code == 200
        [first] = await w.dialog_notifies(d, 1)
        assert list(rlmi(first)[1]) == MEMBERS[:2]
        # Redefined: its subscribers get the new full state.
        async with http.put(f"{base}/{LIST}", json={"members": MEMBERS}) as r:
            assert r.status == 200
        [_, again] = await w.dialog_notifies(d, 2)
        root, docs = rlmi(again)
        assert root.get("fullState") == "true" and list(docs) == MEMBERS
        async with http.get(base) as r:
            assert (await r.json())["items"] == [{"list": "alice-blf@example.com",
                                                  "members": [m[4:] for m in MEMBERS]}]
        for uri, body, words in (("sip:other@example.com", {"members": ["not a uri"]}, "user@domain"),
                                 ("sip:other@example.com", {"members": "bob"}, "members"),
                                 ("sip:other@example.com", {"members": [], "x": 1}, "members"),
                                 (LIST, {"members": [LIST]}, "itself")):
            async with http.put(f"{base}/{uri}", json=body) as r:
                assert r.status == 400 and words in (await r.json())["error"]
        async with http.delete(f"{base}/{LIST}") as r:
            assert r.status == 200
        async with http.delete(f"{base}/{LIST}") as r:
            assert r.status == 404
        async with http.get(base) as r:
            assert (await r.json())["items"] == []


def test_lists_beyond_the_limits_are_configuration_errors():
    from presence_node.config import Config

    with pytest.raises(ValueError, match="max_list_members"):
        Config.model_validate({"resource_lists": LISTS, "limits": {"max_list_members": 2}})
    with pytest.raises(ValueError, match="user@domain"):
        Config.model_validate({"resource_lists": {LIST: ["sip:example.com"]}})


async def test_shared_database_member_change_on_one_node_reaches_a_list_watcher_on_the_other(
        make_node, make_client, pg_dsn):
    a, b = [await make_node(node_id=f"n{i}", cluster_id="c1", sharing_tags={"vip": s}, resource_lists=LISTS,
                            storage_override=PostgresStorage(pg_dsn))
            for i, s in ((1, "active"), (2, "backup"))]
    w, resp, d = await list_watch(make_client, b)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    bob = await make_client("bob", target=a)
    etag_of(await bob.publish(pidf(MEMBERS[0], "open", note="via n1")))
    [_, n] = await w.dialog_notifies(d, 2)
    _, docs = rlmi(n)
    assert b"via n1" in docs[MEMBERS[0]]


async def federated(make_node, tmp_path, mode: str, **fed):
    """Two federated nodes n1, n2 (each its own location) holding LISTS."""
    from kube import free_port

    secret = tmp_path / "cluster-secret"
    secret.write_text("cluster-secret-0123456789abcdef\n")
    ports = [free_port(["127.0.0.1"]) for _ in range(2)]
    nodes = [await make_node(
        node_id=f"n{i + 1}", cluster_id="fed", sharing_tags={f"n{i + 1}": "active"}, resource_lists=LISTS,
        federation={"mode": mode, "listen": f"127.0.0.1:{ports[i]}",
                    "peers": [{"id": f"n{2 - i}", "address": f"127.0.0.1:{ports[1 - i]}"}],
                    "secret_file": str(secret), "heartbeat": 0.2, "peer_timeout": 1.0, **fed}) for i in range(2)]
    await until(lambda: all(x.federation.peers_up == 1 for x in nodes), "peers did not connect")
    return nodes


async def until(cond, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, what
        await asyncio.sleep(0.02)


async def test_federation_full_sharing_member_in_another_location(make_node, make_client, tmp_path):
    nodes = await federated(make_node, tmp_path, "full-sharing")
    w, resp, d = await list_watch(make_client, nodes[1])
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    bob = await make_client("bob", target=nodes[0])
    etag_of(await bob.publish(pidf(MEMBERS[0], "open", note="elsewhere")))
    [_, n] = await w.dialog_notifies(d, 2)
    assert b"elsewhere" in rlmi(n)[1][MEMBERS[0]]


def interest(node, peer: str) -> set:
    return {k for k, e in node.federation.interest[peer] if e == "presence"}


async def test_federation_on_demand_list_members_are_interest_until_the_last_list_watcher_leaves(
        make_node, make_client, tmp_path):
    """On-demand sharing keeps only what has watchers here: a list
    subscription on n2 makes each member watched, so a member's PUBLISH
    through n1 reaches the list watcher (through a periodic resync too); a
    direct watcher of a member leaving does not withdraw what the list still
    watches; the list watcher leaving does."""
    n1, n2 = await federated(make_node, tmp_path, "on-demand-sharing", resync_interval=0.3)
    members = {m[4:] for m in MEMBERS}
    direct = await make_client("carol", target=n2)
    _, dd = await direct.subscribe(MEMBERS[0])
    await direct.dialog_notifies(dd, 1)
    w, resp, d = await list_watch(make_client, n2)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    await until(lambda: interest(n1, "n2") >= members, "the list's members are not n2's interest")
    assert (await direct.resubscribe(dd, 0)).code == 200
    await asyncio.sleep(0.7)  # at least one periodic resync replaced n2's interest on n1
    assert interest(n1, "n2") >= members
    bob = await make_client("bob", target=n1)
    etag_of(await bob.publish(pidf(MEMBERS[0], "open", note="elsewhere")))
    [_, n] = await w.dialog_notifies(d, 2)
    assert b"elsewhere" in rlmi(n)[1][MEMBERS[0]]
    assert (await w.resubscribe(d, 0)).code == 200
    await until(lambda: not interest(n1, "n2") & members, "the members' interest was not withdrawn")


async def test_federation_on_demand_first_list_notify_carries_remote_members_state(
        make_node, make_client, tmp_path):
    """A list subscription queries for its members like a direct watcher
    does: the first NOTIFY holds what another location published before."""
    n1, n2 = await federated(make_node, tmp_path, "on-demand-sharing", query_wait=2.0)
    bob = await make_client("bob", target=n1)
    etag_of(await bob.publish(pidf(MEMBERS[0], "open", note="held by n1")))
    dave = await make_client("dave", target=n1)
    etag_of(await dave.publish(pidf(MEMBERS[2], "open", note="dave on n1")))
    w, resp, d = await list_watch(make_client, n2)
    assert resp.code == 200
    [first] = await w.dialog_notifies(d, 1)
    root, docs = rlmi(first)
    assert root.get("fullState") == "true" and list(docs) == MEMBERS
    assert b"held by n1" in docs[MEMBERS[0]] and b"dave on n1" in docs[MEMBERS[2]]


async def test_federation_on_demand_a_redefined_list_moves_the_interest_to_its_new_members(
        make_node, make_client, tmp_path):
    """A list changed through the admin API while it has subscribers: the
    new members become interest at once (queried: state another location
    already holds reaches the list watcher), the members it lost stop being."""
    n1, n2 = await federated(make_node, tmp_path, "on-demand-sharing")
    erin = "sip:erin@example.com"
    pub = await make_client("erin", target=n1)
    etag_of(await pub.publish(pidf(erin, "open", note="erin on n1")))
    w, resp, d = await list_watch(make_client, n2)
    assert resp.code == 200
    await w.dialog_notifies(d, 1)
    await until(lambda: interest(n1, "n2") >= {m[4:] for m in MEMBERS}, "the list's members are not n2's interest")
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.put(f"http://127.0.0.1:{n2.admin_port}/lists/{LIST}", json={"members": [MEMBERS[0], erin]}) as r:
            assert r.status == 200
    await until(lambda: interest(n1, "n2") == {MEMBERS[0][4:], erin[4:]}, "the interest did not follow the list")
    for count in range(2, 5):
        last = (await w.dialog_notifies(d, count))[-1]
        if b"erin on n1" in rlmi(last)[1].get(erin, b""):
            break
    else:
        raise AssertionError("the new member's remote state never reached the list watcher")
