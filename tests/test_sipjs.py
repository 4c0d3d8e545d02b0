"""A real WebSocket SIP client (#15.6): SIP.js running in Node
(tests/js/sipjs_client.mjs), its Subscriber and Publisher, over WS and WSS.
scripts/setup.sh installs sip.js and ws into .cache/node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from bodies import pidf
from test_tls_ws import served, certs, transports, wait_for  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
MODULES = Path(os.environ.get("SIPJS_MODULES", ROOT / ".cache" / "node" / "node_modules"))
SCRIPT = ROOT / "tests" / "js" / "sipjs_client.mjs"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not (MODULES / "sip.js").is_dir() or not (MODULES / "ws").is_dir(),
    reason="needs node with sip.js and ws (scripts/setup.sh installs them into .cache/node)",
)


class SipJs:
    """One SIP.js process; its JSON lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict] = []

    @classmethod
    async def start(cls, *args: str, ca: Path | None = None) -> "SipJs":
        env = {**os.environ, "SIPJS_MODULES": str(MODULES)}
        if ca is not None:
            env["NODE_EXTRA_CA_CERTS"] = str(ca)
        proc = await asyncio.create_subprocess_exec(
            NODE, str(SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def next(self, event: str, timeout: float = 20.0) -> dict:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                err = await self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"SIP.js ended before {event!r}: {self.events} {err.decode()[-2000:]}")
            e = json.loads(line)
            self.events.append(e)
            assert e["event"] != "error", (e, self.events)
            if e["event"] == event:
                return e

    async def exit_code(self, timeout: float = 20.0) -> int:
        await asyncio.wait_for(self.proc.wait(), timeout)
        return self.proc.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_sipjs_subscriber_over_ws_gets_what_sipjs_publisher_publishes_over_wss(
    make_node, served, certs, tmp_path  # noqa: F811
):
    node = await make_node(transports=transports(served))
    ws = f"ws://127.0.0.1:{node.transports.ports['ws']}/sip"
    wss = f"wss://localhost:{node.transports.ports['wss']}/sip"
    body = tmp_path / "open.xml"
    body.write_bytes(pidf("sip:bob@example.com", basic="open", note="at my desk"))
    watcher = await SipJs.start("subscribe", ws, "sip:alice@example.com", "sip:bob@example.com", "at my desk")
    try:
        first = await watcher.next("notify")
        assert first["state"].startswith("active")
        assert first["via"].startswith("SIP/2.0/WS ")
        publisher = await SipJs.start("publish", wss, "sip:bob@example.com", str(body), ca=served[0])
        try:
            assert await publisher.exit_code() == 0, publisher.events
        finally:
            publisher.kill()
        latest = await watcher.next("notify")
        while "at my desk" not in latest["body"]:
            latest = await watcher.next("notify")
        assert "<basic>open</basic>" in latest["body"].replace(" ", "")
        assert await watcher.exit_code() == 0
    finally:
        watcher.kill()
        await watcher.proc.wait()

    # SIP.js ended without unsubscribing, as a closed browser tab does: its
    # connection closed, so its subscription ends (Kamailio #4118).
    async def gone() -> bool:
        return (await node.storage.counts())[0] == 0

    await wait_for(gone, 5.0)
