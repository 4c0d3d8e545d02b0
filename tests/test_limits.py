"""Per-source limits: one flooding source cannot starve the others."""

import asyncio

from sipclient import SipClient


async def test_flooding_source_is_cut_off_and_others_still_served(make_node):
    node = await make_node(limits={"per_source_rate": 5, "per_source_burst": 5})
    flood = await SipClient(("127.0.0.1", node.sip_port), local_host="127.0.0.1").open()
    other = await SipClient(("127.0.0.1", node.sip_port), local_host="127.0.0.2").open()
    try:
        for _ in range(50):
            flood.send_bytes(flood.build("OPTIONS", "sip:node@127.0.0.1"))
        answered = 0
        try:
            while True:
                await flood.response(timeout=0.5)
                answered += 1
        except asyncio.TimeoutError:
            pass
        assert 5 <= answered <= 7  # the burst, plus what refilled meanwhile
        resp = await other.request(other.build("OPTIONS", "sip:node@127.0.0.1"))
        assert resp.code == 200
    finally:
        flood.close()
        other.close()
    metrics = node.metrics.render().decode()
    assert 'sip_dropped_total{reason="rate-limit"}' in metrics
