"""A real client over TLS (#15.5): pjsua2 (PJSIP) subscribes and publishes
through the node's TLS listener, checking the node's certificate
(tests/pjsua_ua.py ``tls-presence``, in its own process; pjsua2-python comes
with the ``test`` extra)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from test_tls_ws import certs, served, transports  # noqa: F401 (fixtures)

UA = Path(__file__).with_name("pjsua_ua.py")


async def run_pjsua2(port: int, ca: Path, note: str) -> tuple[int, list[dict]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(UA), "tls-presence", f"127.0.0.1:{port}", str(ca), note,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return proc.returncode, events  # type: ignore[return-value]


async def test_pjsua2_subscribes_and_publishes_over_tls(make_node, served):  # noqa: F811
    node = await make_node(transports=transports(served))
    code, events = await run_pjsua2(node.transports.ports["tls"], served[0], "at my desk")
    assert code == 0, events
    assert events[-2]["sub"] == "ACTIVE" and events[-2]["note"] == "at my desk"


async def test_pjsua2_refuses_a_node_certificate_it_does_not_trust(make_node, served, certs):  # noqa: F811
    node = await make_node(transports=transports(served))
    code, events = await run_pjsua2(node.transports.ports["tls"], certs["stranger"][0], "at my desk")
    assert code == 1, events
    assert not any(e.get("sub") == "ACTIVE" for e in events), events
    assert "PJSIP_TLS_ECERTVERIF" in events[0]["reason"], events  # refused for the certificate, nothing else
    assert (await node.storage.counts())[0] == 0
