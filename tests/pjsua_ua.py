"""A real SIP user agent for tests: PJSIP's pjsua2 (PyPI ``pjsua2-python``),
run in its own process so that its threads and C state never meet the
test's event loop, and so that a crash of the library fails one test.

    python pjsua_ua.py mwi AOR NODE_PORT [LOG_FILE]
    python pjsua_ua.py tls-presence HOST:PORT CA_FILE NOTE

``mwi`` (#17): an account ``AOR`` with MWI enabled, its requests sent to
the node at 127.0.0.1:NODE_PORT over UDP as outbound proxy; pjsua
registers, then SUBSCRIBEs to ``message-summary`` for its own AOR, and
every MWI NOTIFY it reports through ``Account.onMwiInfo`` is printed as one
JSON line ``{"state": ..., "body": ...}``.  Runs until its stdin closes.

``tls-presence`` (#15.5): two accounts over one TLS transport, the node as
their outbound proxy, the node's certificate checked against CA_FILE:
alice subscribes to bob's presence, then bob goes online with NOTE
(pjsua2's PUBLISH).  Prints one JSON line per event alice's buddy sees and
exits 0 once bob's NOTE arrives, 1 if the subscription ends or 15 s pass.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time

import pjsua2 as pj


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


def endpoint(log_file: str | None = None) -> pj.Endpoint:
    """A started endpoint on the calling thread only, no sound device."""
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.consoleLevel = 0  # stdout is for the JSON lines only
    cfg.logConfig.level = 0
    if log_file:
        cfg.logConfig.level = 5
        cfg.logConfig.filename = log_file
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    return ep


class MwiAccount(pj.Account):
    def onMwiInfo(self, prm: pj.OnMwiInfoParam) -> None:
        whole = prm.rdata.wholeMsg
        body = whole.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in whole else ""
        say(state=int(prm.state), body=body)


def mwi(aor: str, port: int, log_file: str | None) -> None:
    ep = endpoint(log_file)
    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    acfg = pj.AccountConfig()
    acfg.idUri = aor
    acfg.sipConfig.proxies.append(f"sip:127.0.0.1:{port};lr")
    # pjsua subscribes to MWI once its account is registered (the node is
    # also a registrar, D5).
    acfg.regConfig.registrarUri = "sip:" + aor.split("@", 1)[1]
    acfg.mwiConfig.enabled = True
    acc = MwiAccount()
    acc.create(acfg)
    say(ready=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        ep.libHandleEvents(20)
    acc.shutdown()
    ep.libDestroy()


class Buddy(pj.Buddy):
    def __init__(self, note: str, done: list[int]) -> None:
        super().__init__()
        self.note, self.done = note, done

    def onBuddyState(self) -> None:
        info = self.getInfo()
        say(event="buddy", sub=info.subStateName, status=info.presStatus.statusText, note=info.presStatus.note,
            code=info.subTermCode, reason=info.subTermReason)
        if info.presStatus.note == self.note:
            self.done.append(0)
        elif info.subState == pj.PJSIP_EVSUB_STATE_TERMINATED:
            self.done.append(1)


def tls_presence(server: str, ca: str, note: str) -> None:
    ep = endpoint()
    tc = pj.TransportConfig()
    tc.port = 0
    tc.tlsConfig.CaListFile = ca
    tc.tlsConfig.verifyServer = True
    tc.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc)
    ep.libStart()

    def account(user: str) -> pj.Account:
        cfg = pj.AccountConfig()
        cfg.idUri = f"sip:{user}@example.com"
        cfg.regConfig.registerOnAdd = False
        cfg.sipConfig.proxies.append(f"sip:{server};transport=tls;lr")
        cfg.sipConfig.transportId = tid
        cfg.presConfig.publishEnabled = True
        acc = pj.Account()
        acc.create(cfg)
        return acc

    alice, bob = account("alice"), account("bob")
    done: list[int] = []
    bcfg = pj.BuddyConfig()
    bcfg.uri = "sip:bob@example.com"
    bcfg.subscribe = True
    buddy = Buddy(note, done)
    buddy.create(alice, bcfg)
    deadline = time.monotonic() + 15
    published = False
    while not done and time.monotonic() < deadline:
        ep.libHandleEvents(20)
        if not published and buddy.getInfo().subState == pj.PJSIP_EVSUB_STATE_ACTIVE:
            status = pj.PresenceStatus()
            status.status = pj.PJSUA_BUDDY_STATUS_ONLINE
            status.note = note
            bob.setOnlineStatus(status)
            published = True
    code = done[0] if done else 1
    say(event="exit", code=code, published=published)
    # pjsua2's own shutdown (unsubscribe, unpublish, TLS close) is not under test.
    os._exit(code)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "mwi":
        mwi(args[0], int(args[1]), args[2] if len(args) > 2 else None)
    elif mode == "tls-presence":
        tls_presence(*args)
    else:
        sys.exit(f"unknown mode {mode!r}")
