"""Limits: one flooding source cannot starve the others, and what one
request can make the node hold is bounded."""

import asyncio
import gc
import tracemalloc

from presence_node.sip.headers import parse_via

from sipclient import SipClient
from wire import parse_metrics, raw_request


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


def vias(client: SipClient, n: int, size: int = 200) -> list[str]:
    """``n`` Via lines as proxies would add them (ours on top), each about
    ``size`` bytes."""
    pad = "x" * max(0, size - 60)
    return [f"Via: SIP/2.0/UDP proxy{i}.example.com:5060;branch=z9hG4bK{i}{pad};received=192.0.2.{i % 250}"
            for i in range(1, n)]


def options(client: SipClient, extra: list[str], branch: str | None = None) -> bytes:
    return raw_request(client, "OPTIONS", "sip:node@127.0.0.1", extra, via=client.via(branch))


async def test_header_section_or_via_count_over_the_limit_gets_513(make_node):
    """#12.8: the caps (limits.max_header_bytes, limits.max_vias) are checked
    at parse time; the answer is 513 Message Too Large with a reason, and
    nothing is retained for it."""
    node = await make_node(limits={"max_header_bytes": 4096, "max_vias": 10})
    c = await SipClient(("127.0.0.1", node.sip_port)).open()
    try:
        big = await c.request(options(c, ["Subject: " + "s" * 5000]))
        assert big.code == 513 and "header" in big.reason, big.reason
        many = await c.request(options(c, vias(c, 11, 60)))
        assert many.code == 513 and "Via" in many.reason, many.reason
        assert parse_via(many.headers.values("via")[0]).branch  # answered to the top Via
        assert (await c.request(options(c, vias(c, 10, 60)))).code == 200
        huge = await c.request(options(c, vias(c, 250, 220)))  # the 55 KB of the report
        assert huge.code == 513
    finally:
        c.close()
    m = parse_metrics(node.metrics.render().decode())
    assert m[("sip_dropped_total", (("reason", "too-large"),))] == 3


async def test_retained_responses_stay_within_the_byte_budget(make_node):
    """#12.8: many requests with large headers retain at most
    limits.retained_response_bytes (measured: allocations still held after
    the burst), the oldest forgotten first; the newest are still answered
    from the table, byte for byte."""
    budget = 256 * 1024
    node = await make_node(limits={"retained_response_bytes": budget}, notify={"t1": 0.5, "t2": 4.0})
    c = await SipClient(("127.0.0.1", node.sip_port)).open()
    big = vias(c, 60, 220)  # 13 KB of Via: under the default caps
    n = 600
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            data = options(c, big, branch=f"z9hG4bKbudget{i}")
            assert (await c.request(data)).code == 200
            last = c.raw[-1]
            c.raw.clear()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    try:
        assert held < 2 * budget, f"{held} bytes held after {n} requests of {len(data)} bytes"
        c.send_bytes(data)  # a retransmission of the last one
        assert (await c.response()).code == 200
        assert c.raw == [last]
    finally:
        c.close()
    m = parse_metrics((await node.metrics_text()).decode())
    assert 0 < m[("sip_transactions_retained_bytes", ())] <= budget
    assert m[("sip_transactions_evicted_total", ())] > 0
    assert m[("sip_dropped_total", (("reason", "retransmission"),))] == 1
