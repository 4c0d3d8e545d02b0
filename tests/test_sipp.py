"""SIPp-driven checks: scenarios in tests/sipp/ against a node on loopback.

SIPp runs as a subprocess while the node serves it from this test's event
loop, so it is awaited with asyncio (a blocking wait would starve the node).
A scenario passes when its single call succeeds: exit code 0.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest

from wire import pidf, publications, subscriptions

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "sipp"

pytestmark = [pytest.mark.sipp, pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")]


def _free_port() -> int:
    """A port free for both UDP and TCP on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


async def run_sipp(
    node, scenario: str, tmp_path: Path, transport: str = "u1", options: tuple[str, ...] = (), **keys: str
) -> None:
    args = [
        SIPP, f"127.0.0.1:{node.sip_port}",
        "-sf", str(SCENARIOS / scenario),
        "-i", "127.0.0.1", "-p", str(_free_port()),
        "-t", transport,
        "-m", "1", "-timeout", "20s", "-trace_err", "-nostdin", "-nd",
    ]
    for k, v in keys.items():
        args += ["-key", k, v]
    args += options
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "TERM": "dumb"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode != 0:
        errors = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*_errors.log"))
        raise AssertionError(f"sipp {scenario} exited {proc.returncode}\n{errors}\n{out.decode(errors='replace')[-2000:]}")


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_s23_subscribe_lifecycle_sipp(node, tmp_path, transport):
    """S13, S14, S18, S09, S11, S20, S22, S23 and S10 in one SIPp call, over
    UDP and over TCP (S08)."""
    await run_sipp(node, "sub_lifecycle.xml", tmp_path, transport, pres="bob", watcher="alice", domain="example.com")
    assert await subscriptions(node) == []


async def test_s36_publish_lifecycle_sipp(node, tmp_path):
    """S33, S36, S37, S38 and S39: etags are new on every refresh and modify,
    a replaced or removed etag gets 412."""
    await run_sipp(node, "pub_lifecycle.xml", tmp_path, pres="carol", domain="example.com")
    assert await publications(node, "carol@example.com") == []


async def test_s03_retransmitted_subscribe_sipp(node, make_client, tmp_path):
    # A publication, so the one NOTIFY carries real state.
    bob = await make_client("bob")
    assert (await bob.publish(pidf("bob"))).code == 200
    await run_sipp(node, "retransmission.xml", tmp_path, pres="bob", watcher="dave", domain="example.com")
    subs = await subscriptions(node, watcher="dave@example.com")
    assert len(subs) == 1
    assert subs[0].cseq == 1  # one NOTIFY sent on the dialog, no more


async def test_sipp_digest_publish_and_subscribe(make_node, tmp_path):
    """#15.1: a real digest client (SIPp's [authentication], MD5 with
    qop=auth) publishes and subscribes through the challenges."""
    from presence_node.service.auth import user_line

    users = tmp_path / "users"
    users.write_text(user_line("alice@example.com", "example.com", "alice-pw") + "\n")
    # SIPp answers the first challenge, and knows only MD5.
    node = await make_node(auth={"mode": "digest", "users_file": str(users), "algorithms": ["MD5"]})
    await run_sipp(node, "auth_publish_subscribe.xml", tmp_path, options=("-au", "alice", "-ap", "alice-pw"),
                   user="alice", domain="example.com")
    m = (await node.metrics_text()).decode()
    assert 'sip_auth_results_total{result="ok"} 2.0' in m
