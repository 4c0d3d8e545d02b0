from presence_node.sip.headers import parse_name_addr

PIDF = b"""<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com">
<tuple id="t1"><status><basic>open</basic></status></tuple></presence>"""


async def test_publish_then_subscribe_gets_state(make_client):
    bob = await make_client("bob")
    r = await bob.publish(PIDF)
    assert r.code == 200, r.reason
    alice = await make_client("alice")
    resp, d = await alice.subscribe("sip:bob@example.com")
    assert resp.code == 200
    [n] = await alice.dialog_notifies(d, 1)
    assert b"<basic>open</basic>" in n.body
    assert parse_name_addr(n.headers.get("from")).tag == d.to_tag
