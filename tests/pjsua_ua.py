"""A real SIP user agent for tests: PJSIP's pjsua2 (PyPI ``pjsua2-python``),
run in its own process so that its threads and C state never meet the
test's event loop, and so that a crash of the library fails one test.

    python pjsua_ua.py mwi AOR NODE_PORT [LOG_FILE]

``mwi``: an account ``AOR`` (no registration) with MWI enabled, its
requests sent to the node at 127.0.0.1:NODE_PORT as outbound proxy; pjsua
SUBSCRIBEs to ``message-summary`` for its own AOR, and every MWI NOTIFY
it reports through ``Account.onMwiInfo`` is printed as one JSON line
``{"state": ..., "body": ...}``.  Runs until its stdin closes.
"""

from __future__ import annotations

import json
import select
import sys

import pjsua2 as pj


class MwiAccount(pj.Account):
    def onMwiInfo(self, prm: pj.OnMwiInfoParam) -> None:
        whole = prm.rdata.wholeMsg
        body = whole.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in whole else ""
        print(json.dumps({"state": int(prm.state), "body": body}), flush=True)


def main() -> None:
    mode, aor, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    assert mode == "mwi", mode
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    # Its log goes to LOG_FILE (stdout is for the JSON lines only).
    cfg.logConfig.consoleLevel = 0
    if len(sys.argv) > 4:
        cfg.logConfig.level = 5
        cfg.logConfig.filename = sys.argv[4]
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
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
    print(json.dumps({"ready": True}), flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        ep.libHandleEvents(20)
    acc.shutdown()
    ep.libDestroy()


if __name__ == "__main__":
    main()
