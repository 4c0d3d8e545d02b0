#!/usr/bin/env python3
"""Resource list (RFC 4662) SUBSCRIBE latency of our node (stdlib only).

    .venv/bin/python bench/rls.py [-n 500] [-m 50] [-w 8] [--sockets 4] [--port 5090]

Starts the node (``python -m presence_node`` of this interpreter, memory
storage, log level warning) with one resource list of M members (default
50), publishes a PIDF for every member, then N subscribers (default 500)
SUBSCRIBE to the list with ``Supported: eventlist`` over UDP from a few
sockets, W at a time.  For each it measures the time from sending the
SUBSCRIBE to receiving its 200 and to receiving its first NOTIFY (checked to
be multipart/related with every member), answering every NOTIFY 200 so that
nothing is retransmitted, and prints p50/p99/max of both with the load
average of the machine.  The issue's goal (#17): one SUBSCRIBE answered and
its first multipart NOTIFY sent within 50 ms at p99, for a list of 50.
Not part of the test suite.
"""
import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "example.com"
LIST = f"rls-bench@{DOMAIN}"


def pidf(aor: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{aor}">'
        f'<tuple id="t1"><status><basic>open</basic></status><note>{aor} at desk</note></tuple>'
        "</presence>\n"
    ).encode()


def config(members: list[str]) -> str:
    listed = "\n".join(f"    - sip:{m}" for m in members)
    return f"""log_level: warning
storage:
  backend: memory
resource_lists:
  sip:{LIST}:
{listed}
"""


class Endpoint(asyncio.DatagramProtocol):
    """One UDP socket: sends requests, answers NOTIFYs 200, hands every
    message to its waiter by Call-ID."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiters: dict[str, asyncio.Queue] = {}

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        now = time.perf_counter()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        call_id = headers.get("call-id", headers.get("i", ""))
        if lines[0].startswith("NOTIFY "):
            keep = [f"{n}: {headers[n]}" for n in ("via", "from", "to", "call-id", "cseq") if n in headers]
            reply = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
            assert self.transport is not None
            self.transport.sendto(reply.encode(), addr)
        queue = self.waiters.get(call_id)
        if queue is not None:
            queue.put_nowait((now, lines[0], headers, body))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


def request(method: str, ruri: str, ep_port: int, call_id: str, frm: str, extra: list[str], body: bytes = b"") -> bytes:
    head = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{ep_port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
        "Max-Forwards: 70",
        f"From: <sip:{frm}>;tag={uuid.uuid4().hex[:10]}",
        f"To: <{ruri}>",
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:{frm.split('@')[0]}@127.0.0.1:{ep_port}>",
        *extra,
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def exchange(ep: Endpoint, port: int, data: bytes, call_id: str, want_notify: bool, members: int,
                   timeout: float = 10.0) -> tuple[float, float | None]:
    """Send one request; the delays to its final response and (for a
    SUBSCRIBE) to its first NOTIFY, which must hold every member."""
    queue: asyncio.Queue = asyncio.Queue()
    ep.waiters[call_id] = queue
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    ep.send(data, ("127.0.0.1", port))
    ok = notified = None
    deadline = loop.time() + timeout
    try:
        while ok is None or (want_notify and notified is None):
            t, first, headers, body = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
            if first.startswith("SIP/2.0 "):
                code = int(first.split()[1])
                if code >= 200:
                    if code != 200:
                        raise RuntimeError(f"{first} for {call_id}")
                    ok = t - start
            elif first.startswith("NOTIFY ") and notified is None:
                if not headers.get("content-type", "").startswith("multipart/related"):
                    raise RuntimeError(f"first NOTIFY is {headers.get('content-type')}, not multipart/related")
                if body.count(b"Content-ID:") < members + 1:
                    raise RuntimeError("first NOTIFY does not hold every member")
                notified = t - start
    finally:
        del ep.waiters[call_id]
    assert ok is not None
    return ok, notified


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"p50 {p(0.5) * 1000:7.2f} ms   p99 {p(0.99) * 1000:7.2f} ms   max {values[-1] * 1000:7.2f} ms"


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    eps = []
    for _ in range(args.sockets):
        _, ep = await loop.create_datagram_endpoint(Endpoint, local_addr=("127.0.0.1", 0))
        eps.append(ep)
    ports = [ep.transport.get_extra_info("sockname")[1] for ep in eps]
    members = [f"member{i}@{DOMAIN}" for i in range(args.members)]
    for i, m in enumerate(members):
        call_id = uuid.uuid4().hex
        data = request("PUBLISH", f"sip:{m}", ports[0], call_id, m,
                       ["Event: presence", "Expires: 3600", "Content-Type: application/pidf+xml"], pidf(m))
        await exchange(eps[0], args.port, data, call_id, False, 0)
    window = asyncio.Semaphore(args.window)
    ok: list[float] = []
    notified: list[float] = []

    async def one(i: int) -> None:
        async with window:
            ep, port = eps[i % len(eps)], ports[i % len(eps)]
            call_id = uuid.uuid4().hex
            data = request("SUBSCRIBE", f"sip:{LIST}", port, call_id, f"watcher{i}@{DOMAIN}",
                           ["Event: presence", "Expires: 3600", "Supported: eventlist",
                            "Accept: application/pidf+xml, application/rlmi+xml, multipart/related"])
            a, b = await exchange(ep, args.port, data, call_id, True, args.members)
            ok.append(a)
            assert b is not None
            notified.append(b)

    # A few warm-up subscriptions (first-use imports and caches), not counted.
    await asyncio.gather(*(one(i) for i in range(args.warmup)))
    ok.clear()
    notified.clear()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.warmup, args.warmup + args.subscribers)))
    took = time.perf_counter() - started
    load = os.getloadavg()
    print(f"list of {args.members} members, {args.subscribers} SUBSCRIBEs ({args.window} outstanding, "
          f"{args.sockets} sockets) in {took:.2f} s")
    print(f"  SUBSCRIBE -> 200           {percentiles(ok)}")
    print(f"  SUBSCRIBE -> first NOTIFY  {percentiles(notified)}")
    print(f"  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    for ep in eps:
        ep.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--subscribers", type=int, default=500)
    parser.add_argument("-m", "--members", type=int, default=50, help="list members, at least 1")
    parser.add_argument("-w", "--window", type=int, default=8, help="SUBSCRIBEs outstanding at once")
    parser.add_argument("--sockets", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--port", type=int, default=5090)
    args = parser.parse_args()
    members = [f"member{i}@{DOMAIN}" for i in range(args.members)]
    with tempfile.TemporaryDirectory(prefix="rls-bench-") as tmp:
        cfg = os.path.join(tmp, "node.yaml")
        with open(cfg, "w") as f:
            f.write(config(members))
        log = open(os.path.join(tmp, "node.log"), "w+")
        node = subprocess.Popen(
            [sys.executable, "-m", "presence_node", "--config", cfg, "--sip", f"127.0.0.1:{args.port}",
             "--admin", f"127.0.0.1:{args.port + 1000}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_bound(args.port, node)
            asyncio.run(run(args))
        finally:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                try:
                    node.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)
                    node.wait()
            if node.returncode not in (0, -signal.SIGTERM):
                log.seek(0)
                sys.stderr.write(log.read()[-4000:])


def wait_bound(port: int, node: subprocess.Popen) -> None:
    """Until the node answers an OPTIONS on its SIP port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        deadline = time.monotonic() + 30
        data = request("OPTIONS", f"sip:{DOMAIN}", s.getsockname()[1], uuid.uuid4().hex, f"probe@{DOMAIN}", [])
        while time.monotonic() < deadline:
            if node.poll() is not None:
                sys.exit(f"the node exited with {node.returncode}")
            s.sendto(data, ("127.0.0.1", port))
            try:
                s.recv(65535)
                return
            except OSError:
                continue
    sys.exit("the node did not answer within 30 s")


if __name__ == "__main__":
    main()
