"""The shared database stopped under two node processes (issue #13.2/.3):
requests that need it are refused within ``storage.acquire_timeout`` with
503 and Retry-After, not held; nothing refused is applied later; the nodes
serve again within a second or two of the database's return.  And a
request queued past its transaction timeout is refused, never applied.  A private PostgreSQL server (the
session one is shared by every other test), stopped by ``pg_ctl stop -m
fast`` as an administrator would."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import aiohttp
import psycopg
import pytest

from bodies import pidf
from conftest import SECRET
from pgserver import PostgresServer
from presence_node.storage.postgres import PostgresStorage
from presence_node.storage.schema import PRESENTITY_BUCKETS, PRESENTITY_LOCK
from procs import Proc, clean_env, spawn, wait_ready, write_config
from sipclient import SipClient
from wire import parse_metrics

BOB = "sip:bob@example.com"
#: storage.acquire_timeout in these nodes: the bound on every answer below
#: (plus the node's own work and a loaded machine's slack).
ACQUIRE = 1.0
BOUND = ACQUIRE + 1.5
OUTAGE = 5.0


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    # Under the system temporary directory, as conftest's: pytest's 0700
    # tree is not traversable by the postgres user.
    root = Path(tempfile.mkdtemp(prefix="presence-pg-outage-"))
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


async def ready(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def readyz(port: int) -> tuple[int, str | None]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
            return r.status, (await r.json()).get("reason")


async def metrics(port: int) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {SECRET}"}) as r:
            return parse_metrics(await r.text())


@contextlib.asynccontextmanager
async def two_nodes(root: Path, dsn: str) -> AsyncIterator[list[Proc]]:
    (root / "dsn").write_text(dsn)
    (root / "secret").write_text(SECRET)
    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for node_id, state in (("n1", "active"), ("n2", "backup")):
            cfg = write_config(
                root / node_id, node_id=node_id, cluster_id="c1", sharing_tags={"vip": state},
                storage={"backend": "postgres", "dsn_file": str(root / "dsn"), "acquire_timeout": ACQUIRE},
                admin_secret_file=str(root / "secret"), log_level="warning",
            )
            proc = await stack.enter_async_context(spawn(root / node_id, "--config", str(cfg), env=clean_env()))
            await wait_ready(proc.admin_port)
            procs.append(proc)
        yield procs


async def timed(coro) -> tuple[float, object]:
    t0 = time.monotonic()
    try:
        out = await coro
    except asyncio.TimeoutError:
        out = None
    return time.monotonic() - t0, out


async def test_database_outage_answers_503_at_once_applies_nothing_late_and_recovers(tmp_path, own_pg):
    async with two_nodes(tmp_path, own_pg.create_database()) as (n1, n2):
        addr = {p: ("127.0.0.1", p.sip_port) for p in (n1, n2)}
        clients: list[SipClient] = []

        async def client(p: Proc, user: str) -> SipClient:
            c = await SipClient(addr[p], "udp", user).open()
            clients.append(c)
            return c

        try:
            pub = await client(n1, "bob")
            r = await pub.publish(pidf(BOB, "open", note="before"))
            assert r.code == 200
            etag = r.headers.get("sip-etag")
            watcher = await client(n2, "alice")
            resp, d = await watcher.subscribe(BOB)
            assert resp.code == 200
            await watcher.dialog_notifies(d, 1)

            own_pg.halt()
            down_at = time.monotonic()
            await asyncio.sleep(1.0)
            # A modify of the live publication and a new SUBSCRIBE through
            # each node, 1 s into the outage.
            senders = [await client(p, "bob") for p in (n1, n2)]
            subscribers = [await client(p, f"carol{i}") for i, p in enumerate((n1, n2))]
            answers = await asyncio.gather(
                *(timed(asyncio.wait_for(c.publish(pidf(BOB, "closed", note="late"), etag=etag), 8.0))
                  for c in senders),
                *(timed(asyncio.wait_for(c.subscribe(BOB), 8.0)) for c in subscribers),
            )
            for took, out in answers:
                assert out is not None, "no answer within 8 s"
                resp = out[0] if isinstance(out, tuple) else out
                print(f"answer {resp.code} after {took:.2f} s")
                assert resp.code == 503 and resp.headers.get("retry-after"), (resp.code, took)
                assert took < BOUND, took
            for p in (n1, n2):
                # Not ready, for its storage (an orchestrator tells it from a
                # dead node: #13.3); the process itself is fine.
                assert await readyz(p.admin_port) == (503, "storage-unavailable")
                async with aiohttp.ClientSession() as s:
                    async with s.get(f"http://127.0.0.1:{p.admin_port}/healthz") as r:
                        assert r.status == 200

            await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
            own_pg.resume()
            back_at = time.monotonic()
            waiting = {n1.admin_port, n2.admin_port}
            while waiting and time.monotonic() - back_at < 15:
                waiting = {p for p in waiting if not await ready(p)}
                await asyncio.sleep(0.05)
            recovered = time.monotonic() - back_at
            print(f"both nodes ready {recovered:.2f} s after the database returned")
            assert not waiting and recovered < 3.0, recovered

            # Nothing refused was applied later: the etag the refused
            # modifies named is still the live one, and no watcher saw "late".
            r = await pub.publish(None, etag=etag)
            assert r.code == 200, r.code
            await asyncio.sleep(0.5)
            assert not any(b"late" in n.body for n in watcher.notifies_for(d))
            m = await metrics(n1.admin_port)
            assert m.get(("storage_refused_requests_total", (("reason", "unavailable"),)), 0) >= 2
        finally:
            for c in clients:
                c.close()


async def test_a_request_queued_past_its_transaction_timeout_is_refused_never_applied(make_node, make_client, pg_dsn):
    """#13.2: with T1 = 1 ms (the client's transaction times out after
    64*T1 = 64 ms), a SUBSCRIBE queued in group commit behind two statements
    held on a lock is answered 503 when its statement would start (after
    0.1 s) and its subscription never exists, even once the lock is gone."""
    node = await make_node(cluster_id="c1", sharing_tags={"vip": "active"}, storage_override=PostgresStorage(pg_dsn),
                           notify={"t1": 0.001, "t2": 0.004})
    clients = [await make_client(f"w{i}", target=node) for i in range(3)]
    async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
        # Every presentity bucket held elsewhere: every SUBSCRIBE's statement waits.
        await other.execute("SELECT pg_advisory_xact_lock(%s, b) FROM generate_series(0, %s) b",
                            (PRESENTITY_LOCK, PRESENTITY_BUCKETS - 1))
        first = [asyncio.ensure_future(c.subscribe(BOB)) for c in clients[:2]]
        await asyncio.sleep(0.3)  # both statements under way, stuck
        resp, late = await clients[2].subscribe(BOB)
        assert resp.code == 503 and resp.headers.get("retry-after"), resp.code
        await other.rollback()
    assert [(await f)[0].code for f in first] == [200, 200]  # begun in time: applied and answered
    subs = await node.storage.list_subscriptions(time.time(), presentity=None, watcher=None, event=None,
                                                 offset=0, limit=10)
    assert len(subs) == 2 and late.call_id not in {s.call_id for s in subs}
    m = parse_metrics((await node.metrics_text()).decode())
    assert m.get(("storage_refused_requests_total", (("reason", "expired"),))) == 1
