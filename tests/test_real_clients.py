"""Real SIP clients against the node: PJSIP's pjsua2 (PyPI
``pjsua2-python``, a test dependency) run in its own process by
:mod:`pjsua_ua`, talking to the node over UDP on loopback (#17).

M3 (RFC 3842 §3.6) with a real phone: pjsua registers, subscribes to
``message-summary`` for its own AOR (its Account MWI), and reports through
``onMwiInfo`` the node's first NOTIFY (nothing waiting) and then the
summary a voicemail server PUBLISHes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from bodies import etag_of

MWI = "application/simple-message-summary"
ALICE = "sip:alice@example.com"
WAITING = b"Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\nVoice-Message: 2/8 (1/0)\r\n"
UA = Path(__file__).with_name("pjsua_ua.py")


class Pjsua:
    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    async def line(self, timeout: float = 10.0) -> dict[str, Any]:
        """Its next JSON line (pjlib's start-up lines before its log is
        set up are skipped)."""
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            assert raw, f"pjsua exited; its log: {self.log}"
            if raw.startswith(b"{"):
                return json.loads(raw)


@pytest.fixture
async def pjsua_mwi(node, tmp_path) -> AsyncIterator[Pjsua]:
    log = tmp_path / "pjsua.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(UA), "mwi", ALICE, str(node.sip_port), str(log),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield Pjsua(proc, log)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # it stops when its stdin closes
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def test_m3_pjsua_account_mwi_gets_the_voicemail_summary(pjsua_mwi, make_client):
    assert await pjsua_mwi.line() == {"ready": True}
    first = await pjsua_mwi.line()
    assert first["body"] == "Messages-Waiting: no\r\n"  # nothing published yet
    vm = await make_client("vm")
    etag_of(await vm.publish(WAITING, event="message-summary", ctype=MWI, uri=ALICE))
    lit = await pjsua_mwi.line()
    assert lit["body"].encode() == WAITING
