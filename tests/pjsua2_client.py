"""A real SIP client over TLS for the tests: pjsua2 (PyPI pjsua2-python,
PJSIP's own bindings), run as a separate process by tests/test_pjsua2_tls.py
(PJSIP keeps its own global state and threads).

    python pjsua2_client.py HOST:PORT CA_FILE NOTE

Two accounts over one TLS transport, the node as their outbound proxy:
alice subscribes to bob's presence, then bob goes online with NOTE
(pjsua2's PUBLISH).  Prints one JSON line per event alice's buddy sees and
exits 0 once bob's NOTE arrives, 1 if the subscription ends or 15 s pass.
The server's certificate is checked against CA_FILE (verifyServer).
"""

from __future__ import annotations

import json
import os
import sys
import time

import pjsua2 as pj

server, ca, note = sys.argv[1], sys.argv[2], sys.argv[3]
done: list[int] = []


def say(**event: object) -> None:
    print(json.dumps(event), flush=True)


class Buddy(pj.Buddy):
    def onBuddyState(self) -> None:
        info = self.getInfo()
        say(event="buddy", sub=info.subStateName, status=info.presStatus.statusText, note=info.presStatus.note,
            code=info.subTermCode, reason=info.subTermReason)
        if info.presStatus.note == note:
            done.append(0)
        elif info.subState == pj.PJSIP_EVSUB_STATE_TERMINATED:
            done.append(1)


class Account(pj.Account):
    pass


def account(user: str, tid: int) -> Account:
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{user}@example.com"
    cfg.regConfig.registerOnAdd = False
    cfg.sipConfig.proxies.append(f"sip:{server};transport=tls;lr")
    cfg.sipConfig.transportId = tid
    cfg.presConfig.publishEnabled = True
    acc = Account()
    acc.create(cfg)
    return acc


ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0
cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 0
cfg.logConfig.consoleLevel = 0
ep.libInit(cfg)
tc = pj.TransportConfig()
tc.port = 0
tc.tlsConfig.CaListFile = ca
tc.tlsConfig.verifyServer = True
tc.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
tid = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tc)
ep.libStart()

alice, bob = account("alice", tid), account("bob", tid)
bcfg = pj.BuddyConfig()
bcfg.uri = "sip:bob@example.com"
bcfg.subscribe = True
buddy = Buddy()
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
sys.stdout.flush()
# pjsua2's own shutdown (unsubscribe, unpublish, TLS close) is not under test.
os._exit(code)
