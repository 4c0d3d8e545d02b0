"""Digest-authenticated PUBLISH or SUBSCRIBE load (#15), as phones send it:
the request, its 401/407 challenge, the request again with MD5 qop=auth
credentials.  SIPp cannot take a per-call digest user from its injection
file, hence this client; what it measures is the server's CPU (bench/auth.sh
reads /proc), so the client's own speed only has to keep the rate.

    auth_load.py HOST PORT publish|subscribe COUNT RATE [--prefix u] [--password pw]

User i is PREFIX<i> at HOST with PASSWORD; a SUBSCRIBE of user i watches
pPREFIX<i> and its NOTIFYs are answered 200.  Prints one JSON line:
calls, ok, failed, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import sys
import time

from presence_node.sip import digest
from presence_node.sip.message import Request, Response, serialise
from presence_node.sip.parser import parse

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{u}@{h}">'
    '<tuple id="t1"><status><basic>open</basic></status><note>Online</note></tuple></presence>\n'
)


class Load(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.waiting: dict[tuple[str, str], asyncio.Future[Response]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse(data, datagram=True)
        h = msg.headers
        if isinstance(msg, Request):
            if msg.method == "NOTIFY":
                to = h.get("to") or ""
                hs = [("Via", v) for v in h.values("via")]
                hs += [("From", h.get("from") or ""), ("To", to), ("Call-ID", h.get("call-id") or ""),
                       ("CSeq", h.get("cseq") or "")]
                self.transport.sendto(serialise("SIP/2.0 200 OK", hs), addr)  # type: ignore[union-attr]
            return
        if msg.code < 200:
            return
        fut = self.waiting.pop((h.get("call-id") or "", h.get("cseq") or ""), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def transact(self, data: bytes, call_id: str, cseq: str) -> Response | None:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting[(call_id, cseq)] = fut
        for wait in (0.5, 1.0, 2.0, 4.0, 4.0):
            self.transport.sendto(data, self.server)  # type: ignore[union-attr]
            try:
                return await asyncio.wait_for(asyncio.shield(fut), wait)
            except asyncio.TimeoutError:
                continue
        self.waiting.pop((call_id, cseq), None)
        return None

    def build(self, method: str, user: str, target: str, cseq: int, call_id: str, tag: str,
              creds: tuple[str, str] | None) -> bytes:
        host = self.server[0]
        uri = f"sip:{target}@{host}"
        hs = [
            ("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch=z9hG4bK{secrets.token_hex(8)};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@{host}>;tag={tag}"),
            ("To", f"<{uri}>"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:{user}@{self.local[0]}:{self.local[1]}>"),
            ("Event", "presence"),
            ("Expires", "3600"),
        ]
        if creds is not None:
            hs.append(creds)
        body = b""
        if method == "PUBLISH":  # the body from the first attempt on, as phones send it
            body = PIDF.format(u=user, h=host).encode()
            hs.append(("Content-Type", "application/pidf+xml"))
        return serialise(f"{method} {uri} SIP/2.0", hs, body)

    async def call(self, method: str, user: str, password: str) -> bool:
        target = user if method == "PUBLISH" else f"p{user}"
        call_id, tag = secrets.token_hex(10), secrets.token_hex(4)
        first = await self.transact(self.build(method, user, target, 1, call_id, tag, None), call_id, f"1 {method}")
        if first is None or first.code not in (401, 407):
            return first is not None and first.code in (200, 202)
        ask = "www-authenticate" if first.code == 401 else "proxy-authenticate"
        chal = next((c for c in first.headers.lines(ask) if re.search(r"algorithm=\"?MD5\b", c) or "algorithm" not in c),
                    None)
        if chal is None:
            return False
        realm = re.search(r'realm="([^"]*)"', chal).group(1)  # type: ignore[union-attr]
        nonce = re.search(r'nonce="([^"]*)"', chal).group(1)  # type: ignore[union-attr]
        uri = f"sip:{target}@{self.server[0]}"
        cnonce = secrets.token_hex(8)
        ha1 = digest.ha1("MD5", user, realm, password)
        resp = digest.response("MD5", ha1, nonce, "00000001", cnonce, "auth", method, uri)
        value = (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}",'
                 f' algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"')
        header = "Authorization" if first.code == 401 else "Proxy-Authorization"
        second = await self.transact(self.build(method, user, target, 2, call_id, tag, (header, value)), call_id,
                                     f"2 {method}")
        return second is not None and second.code in (200, 202)


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("workload", choices=["publish", "subscribe"])
    p.add_argument("count", type=int)
    p.add_argument("rate", type=float)
    p.add_argument("--prefix", default="u")
    p.add_argument("--password", default="pw")
    args = p.parse_args()
    loop = asyncio.get_running_loop()
    _, load = await loop.create_datagram_endpoint(lambda: Load((args.host, args.port)), local_addr=("127.0.0.1", 0))
    method = args.workload.upper()
    t0 = time.perf_counter()
    tasks = []
    for i in range(1, args.count + 1):
        delay = t0 + (i - 1) / args.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(load.call(method, f"{args.prefix}{i}", args.password)))
    results = await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    ok = sum(results)
    print(json.dumps({"calls": args.count, "ok": ok, "failed": args.count - ok, "seconds": round(seconds, 2)}))
    return 0 if ok == args.count else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
