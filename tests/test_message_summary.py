"""message-summary (RFC 3842, MWI) end to end over real sockets: a
voicemail server PUBLISHes, phones SUBSCRIBE, in memory, shared-database
and federation modes (#17.1).

RFC 3842 statements checked here (README conformance table, "MWI"):
M1 (§3.1) the event package name is ``message-summary``;
M2 (§3.4) the body is ``application/simple-message-summary``;
M3 (§3.6) the NOTIFY carries the current summary, the first one on
subscription; M4 (§5.2) a body outside the grammar is refused (400, no
state changes).  Unsolicited MWI NOTIFYs (§3, "MAY") are not sent: only
subscribers are notified.
"""

from __future__ import annotations

import asyncio

import pytest

from bodies import etag_of, publications
from presence_node.storage.postgres import PostgresStorage

MWI = "application/simple-message-summary"
ALICE = "sip:alice@example.com"
WAITING = b"Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\nVoice-Message: 2/8 (1/0)\r\n"
READ = b"Messages-Waiting: no\r\nMessage-Account: sip:alice@vmail.example.com\r\nVoice-Message: 0/10\r\n"


async def mwi_watch(make_client, target=None, transport: str = "udp"):
    phone = await make_client("alice", transport, target=target)
    resp, d = await phone.subscribe(ALICE, event="message-summary", accept=MWI)
    assert resp.code == 200, f"{resp.code} {resp.reason}"
    [first] = await phone.dialog_notifies(d, 1)
    return phone, d, first


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_m1_m2_m3_voicemail_publish_lights_the_lamp(make_client, transport):
    phone, d, first = await mwi_watch(make_client, transport=transport)
    assert first.headers.get("event") == "message-summary"
    assert first.headers.get("content-type") == MWI
    assert first.body == b"Messages-Waiting: no\r\n"  # nothing published yet
    vm = await make_client("vm", transport)
    tag = etag_of(await vm.publish(WAITING, event="message-summary", ctype=MWI, uri=ALICE))
    [_, lit] = await phone.dialog_notifies(d, 2)
    assert lit.body == WAITING and lit.headers.get("content-type") == MWI
    etag_of(await vm.publish(READ, event="message-summary", ctype=MWI, etag=tag, uri=ALICE))
    [_, _, dark] = await phone.dialog_notifies(d, 3)
    assert dark.body == READ


async def test_m4_bad_summary_is_400_and_changes_nothing(make_client, node):
    phone, d, _ = await mwi_watch(make_client)
    vm = await make_client("vm")
    for body in (b"Voice-Message: 1/0\r\n", b"Messages-Waiting: perhaps\r\n",
                 b"Messages-Waiting: yes\r\nVoice-Message: lots\r\n"):
        r = await vm.publish(body, event="message-summary", ctype=MWI, uri=ALICE)
        assert r.code == 400, body
        assert r.reason != "Bad Request"  # the reason names what is wrong
    r = await vm.publish(WAITING, event="message-summary", ctype="text/plain", uri=ALICE)
    assert r.code == 415 and r.headers.get("accept") == MWI
    assert await publications(node, "message-summary") == []
    # A round trip on the same socket: anything sent before it has arrived.
    assert (await phone.request(phone.build("OPTIONS", ALICE))).code == 200
    assert len(phone.notifies_for(d)) == 1


async def test_m3_shared_database_publish_on_one_node_reaches_a_phone_on_the_other(make_node, make_client, pg_dsn):
    nodes = [
        await make_node(node_id=f"n{i}", cluster_id="c1", sharing_tags={"vip": state},
                        cluster_pres_events=["presence", "message-summary"],
                        storage_override=PostgresStorage(pg_dsn))
        for i, state in ((1, "active"), (2, "backup"))
    ]
    phone, d, _ = await mwi_watch(make_client, target=nodes[1])
    vm = await make_client("vm", target=nodes[0])
    etag_of(await vm.publish(WAITING, event="message-summary", ctype=MWI, uri=ALICE))
    [_, lit] = await phone.dialog_notifies(d, 2)
    assert lit.body == WAITING


async def test_m3_federation_publish_in_one_location_reaches_a_phone_in_another(make_node, make_client, tmp_path):
    from kube import free_port

    secret = tmp_path / "cluster-secret"
    secret.write_text("cluster-secret-0123456789abcdef\n")
    ports = [free_port(["127.0.0.1"]) for _ in range(2)]
    nodes = []
    for i in range(2):
        nodes.append(await make_node(
            node_id=f"n{i + 1}", cluster_id="fed", sharing_tags={f"n{i + 1}": "active"},
            cluster_pres_events=["presence", "message-summary"],
            federation={"mode": "on-demand-sharing", "listen": f"127.0.0.1:{ports[i]}",
                        "peers": [{"id": f"n{2 - i}", "address": f"127.0.0.1:{ports[1 - i]}"}],
                        "secret_file": str(secret), "heartbeat": 0.2, "peer_timeout": 1.0}))
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while not all(n.federation.peers_up == 1 for n in nodes):
        assert loop.time() < end, "peers did not connect"
        await asyncio.sleep(0.02)
    phone, d, _ = await mwi_watch(make_client, target=nodes[1])
    while ("alice@example.com", "message-summary") not in nodes[0].federation.interest["n2"]:
        assert loop.time() < end + 5, "interest did not reach n1"
        await asyncio.sleep(0.02)
    vm = await make_client("vm", target=nodes[0])
    etag_of(await vm.publish(WAITING, event="message-summary", ctype=MWI, uri=ALICE))
    [_, lit] = await phone.dialog_notifies(d, 2)
    assert lit.body == WAITING
