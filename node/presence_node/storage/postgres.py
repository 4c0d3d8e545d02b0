"""The PostgreSQL backend: every node of a cluster reads and writes one
database (the seed's ``fallback2db``), and nothing is cached, so no node
ever answers from state another node has changed.

Each interface method is one statement (or one short transaction), which is
where the cross-node guarantees come from:

* an etag compare-and-swap is one ``UPDATE ... WHERE etag = old``: of two
  concurrent modifies of one etag through two nodes, the second re-checks
  the row after the first commits and matches nothing (S45);
* NOTIFY CSeq and document versions come from ``UPDATE ... SET cseq =
  cseq + 1 ... RETURNING``, never from a node's copy (S09, S61, S67, S79);
* expiry is ``DELETE ... RETURNING`` joined with the tags the acting node
  owns *in the database*, with the tag rows share-locked (an activation
  waits for the sweep to finish) and the victims locked ``SKIP LOCKED``, so
  each record is expired, and its NOTIFY sent, by exactly one node even in
  a split brain;
* an initial PUBLISH and a SUBSCRIBE are one statement each (a PL/pgSQL
  function that writes, then reads with a fresh snapshot: the watchers to
  notify, or the state for the first NOTIFY).  The read runs before the
  write commits, so every publication write takes a shared and every new
  subscription an exclusive advisory lock of the presentity's bucket
  (triggers, migration 3): of a concurrent PUBLISH and SUBSCRIBE of one
  presentity, the second waits for the first to commit and sees it;
* under load, initial PUBLISHes (and SUBSCRIBEs) that arrive while the
  database is busy go as one statement and one transaction
  (``batching.py``), their bucket locks taken first in ascending order
  (migration 4), as every statement that may lock several buckets does;
* the live-state limits read counts kept in this process (:meth:`usage`):
  a recount of every table every ``limits.count_refresh_interval``
  (:meth:`refresh_usage`, one statement, never per request) plus what this
  node stored since; the per-presentity cap is counted inside the PUBLISH
  statement itself (migration 6).

When the database is gone nothing waits for it (connections are leased
in :mod:`.leases`): a connection not had within ``acquire_timeout``, or
one lost, is :class:`StorageUnavailable` at once (the request's answer is
503 with Retry-After), and a request whose client has given up is never
applied (``base.request_deadline``, checked right before its statement).
Lost connections are retried every ``reconnect_timeout`` seconds instead
of psycopg_pool's back-off (1, 2, 4, ... s, which kept nodes away for 8 s
after a 20 s outage).

The schema is created and migrated at start, under an advisory lock so that
nodes starting together do not race; start-up never deletes anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from operator import attrgetter
from typing import Any, Collection, Mapping, Sequence

import psycopg
from psycopg import AsyncConnection
from psycopg.types.numeric import Int8
from psycopg_pool import AsyncConnectionPool

from .base import PresentityFull, StaleEpoch, StorageUnavailable, UnknownTag, check_deadline, request_deadline
from .batching import Batcher
from .leases import Leases, unavailable
from .records import Publication, Registration, Subscription, TagState, Usage, differing_keys, source_ip
from .schema import MIGRATIONS, MIGRATION_LOCK
from .subscribers import Subscriber

log = logging.getLogger(__name__)

#: Each record's columns, in its dataclass's field order (rows map onto the
#: records positionally), and the same as a select list.
SUB_FIELDS = (
    "id", "call_id", "remote_tag", "presentity", "event", "event_header", "event_params", "watcher", "remote_uri",
    "local_uri", "contact", "routes", "transport", "source", "accept", "expires_at", "remote_cseq", "cseq", "version",
    "status", "tag",
)
PUB_FIELDS = ("presentity", "event", "etag", "body", "content_type", "expires_at", "received_at", "tag", "origin")
REG_FIELDS = ("aor", "contact", "expires_at", "call_id", "cseq", "tag", "source")
TAG_FIELDS = ("name", "owner", "epoch", "since")
SUBSCRIBER_FIELDS = ("username", "realm", "aor", "ha1_md5", "ha1_sha256")


def _columns(fields: Sequence[str], alias: str = "") -> str:
    """A select list; ``alias``: of that table (``s`` gives ``s.id, ...``)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + f for f in fields)


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def _reg_columns(alias: str = "") -> str:
    """Bindings from before migration 6 have no tag (NULL): read as ''."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"coalesce({prefix}{f}, '')" if f == "tag" else prefix + f for f in REG_FIELDS)


_SUB_COLUMNS = _columns(SUB_FIELDS)
_PUB_COLUMNS = _columns(PUB_FIELDS)
_TAG_COLUMNS = _columns(TAG_FIELDS)
_REG_COLUMNS = _reg_columns()
_SUBSCRIBER = _columns(SUBSCRIBER_FIELDS)
#: The per-presentity cap when none is asked for (presence_publish takes one).
NO_CAP = 2**62
#: Rows one expiry sweep takes at most; the next sweep takes the rest.
EXPIRY_BATCH = 2000
#: Group commit (batching.py): requests per statement at most, and
#: statements of one kind under way at once.
MAX_BATCH = 32
MAX_INFLIGHT = 2
#: Seconds a queued request waits for a statement of its kind before it
#: starts one of its own (those under way may be stuck on locks).
MAX_WAIT = 0.1

#: presence_publish's arguments: a publication's fields but its origin (a
#: SIP publication's is ''), then now, source, cap and the sending node.
_PUBLISH_FIELDS = tuple(f for f in PUB_FIELDS if f != "origin")
_PUBLISH_NARGS = len(_PUBLISH_FIELDS) + 4
_PUBLISH_ONE = f"SELECT {_SUB_COLUMNS} FROM presence_publish({_placeholders(_PUBLISH_NARGS)})"
#: The recount behind usage(): the totals, then each source IP holding at
#: least %s live records (a subscription's source is host:port, grouped
#: first, then cut to the IP: one regexp per distinct source, not per row).
#: Measured at 100k rows per table: 0.3 to 0.8 s of database time on a
#: loaded 2-core machine, most of it the distinct presentities; hence a
#: recount every 30 s by default, never per request.
_RECOUNT = """
    SELECT 'publications', NULL, count(*) FROM publications
    UNION ALL SELECT 'presentities', NULL, count(*) FROM (SELECT DISTINCT presentity, event FROM publications) k
    UNION ALL SELECT 'subscriptions', NULL, count(*) FROM subscriptions
    UNION ALL SELECT 'registrations', NULL, count(*) FROM registrations
    UNION ALL SELECT 'source', ip, sum(n)::bigint FROM (
        SELECT source AS ip, count(*) AS n FROM publications WHERE source <> '' GROUP BY source
        UNION ALL SELECT regexp_replace(source, ':[0-9]+$', ''), sum(n)
            FROM (SELECT source, count(*) AS n FROM subscriptions GROUP BY source) g GROUP BY 1
        UNION ALL SELECT source, count(*) FROM registrations WHERE source <> '' GROUP BY source
    ) s GROUP BY ip HAVING sum(n) >= %s
"""
#: presence_subscribe's arguments: a subscription's fields, then now and
#: watchers_of; its rows: the watcher count, then a publication's columns.
_SUBSCRIBE_NARGS = len(SUB_FIELDS) + 2
_SUBSCRIBE_NCOLUMNS = 1 + len(PUB_FIELDS)
_SUBSCRIBE_ONE = f"SELECT * FROM presence_subscribe({_placeholders(_SUBSCRIBE_NARGS)})"
#: presence_next_notify's rows: id, cseq, version, then a publication's columns.
_NOTIFY_NCOLUMNS = 3 + len(PUB_FIELDS)
_NOTIFY_ONE = "SELECT * FROM presence_next_notify(%s, %s, %s, %s)"
#: The one INSERT of each table (the publications' takes ON CONFLICT clauses
#: after it).
_INSERT_PUB = f"INSERT INTO publications ({_PUB_COLUMNS}) VALUES ({_placeholders(len(PUB_FIELDS))})"
_INSERT_SUB = f"INSERT INTO subscriptions ({_SUB_COLUMNS}) VALUES ({_placeholders(len(SUB_FIELDS))})"
_INSERT_REG = f"INSERT INTO registrations ({_columns(REG_FIELDS)}) VALUES ({_placeholders(len(REG_FIELDS))})"
_NOTIFY_ONE_SENDER = "SELECT * FROM presence_next_notify(%s, %s, %s, %s, %s)"


@functools.cache
def _batch_sql(columns: str, function: str, nargs: int, ncolumns: int, n: int, lock: str | None) -> str:
    """One statement for ``n`` calls of a hot function, with ``$n``
    placeholders: the calls, each row led by its call's index, after (for
    ``lock`` "shared" or "exclusive") a first branch that locks the
    presentities' buckets in order (index -1; parameters 1..n are the
    presentities).  A plain (not parallel) UNION ALL runs its branches in
    order."""
    branches = []
    base = 0
    if lock is not None:
        branches.append(
            f"SELECT -1{', NULL' * ncolumns} FROM presence_lock_buckets("
            f"ARRAY[{', '.join(f'${k}' for k in range(1, n + 1))}]::text[], {'true' if lock == 'exclusive' else 'false'})"
        )
        base = n
    for i in range(n):
        first = base + i * nargs + 1
        args = ", ".join(f"${k}" for k in range(first, first + nargs))
        branches.append(f"SELECT {i}, {columns} FROM {function}({args})")
    return " UNION ALL ".join(branches)


def _by_index(rows: list[tuple[Any, ...]], n: int) -> list[list[tuple[Any, ...]]]:
    """A batch's rows split per call (index -1, the lock step, dropped)."""
    out: list[list[tuple[Any, ...]]] = [[] for _ in range(n)]
    for r in rows:
        if r[0] >= 0:
            out[r[0]].append(r[1:])
    return out


#: SQLSTATE classes one request of a batch can cause: data exceptions,
#: integrity violations (an unknown tag), transaction rollback (deadlock),
#: PL/pgSQL raises.  Connection loss, timeouts, shutdown, resource limits
#: are every request's answer at once: retrying them one by one would only
#: multiply the wait.
_ITEM_ERRORS = frozenset({"22", "23", "40", "P0"})


def _statement_error(e: BaseException) -> bool:
    """May this batch error be one request's fault (try them one by one)?"""
    return isinstance(e, psycopg.Error) and (e.sqlstate or "")[:2] in _ITEM_ERRORS


def _batcher(one: Any, many: Any) -> Batcher[Any, Any]:
    """Group commit for one kind of hot statement, with this backend's bounds."""
    return Batcher(
        one, many, max_batch=MAX_BATCH, max_inflight=MAX_INFLIGHT, max_wait=MAX_WAIT, item_error=_statement_error
    )


def _sub(row: tuple[Any, ...]) -> Subscription:
    return Subscription(*row)


def _pub(row: tuple[Any, ...]) -> Publication:
    p = Publication(*row)
    p.body = bytes(p.body)
    return p


#: A record's values in its columns' order (attrgetter: C, on the hot path).
_pub_params = attrgetter(*PUB_FIELDS)
_publish_fields = attrgetter(*_PUBLISH_FIELDS)
_reg_params = attrgetter(*REG_FIELDS)


def _sub_params(sub: Subscription) -> tuple[Any, ...]:
    return (
        sub.id, sub.call_id, sub.remote_tag, sub.presentity, sub.event, sub.event_header, sub.event_params,
        sub.watcher, sub.remote_uri, sub.local_uri, sub.contact, sub.routes, sub.transport, sub.source,
        # int8 whatever the value: psycopg sends a small int as int2 and
        # keys prepared statements by parameter types, so mixed widths
        # would re-prepare nearly every batch.
        sub.accept, sub.expires_at, Int8(sub.remote_cseq), Int8(sub.cseq), Int8(sub.version), sub.status,
        sub.tag,
    )


def _tag(row: tuple[Any, ...]) -> TagState:
    return TagState(*row)


class PostgresStorage:
    shared = True

    def __init__(
        self, dsn: str, *, min_size: int = 2, max_size: int = 8, open_timeout: float = 10.0,
        acquire_timeout: float = 1.5, reconnect_timeout: float = 0.5,
    ) -> None:
        self.dsn = dsn
        self.open_timeout = open_timeout
        # reconnect_timeout: psycopg_pool retries a lost connection with a
        # doubling delay (1, 2, 4, ... s) for this long, then leaves it to
        # the next request that finds the pool empty.  Short, so a
        # connection is tried again at least every reconnect_timeout
        # seconds while the node has any work (the expiry sweep, /readyz),
        # never after a long back-off.
        self._pool = AsyncConnectionPool(
            dsn, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True},
            reconnect_timeout=reconnect_timeout,
        )
        #: Connections for every statement and transaction (leases.Leases).
        self.pool = Leases(self._pool, max_size, acquire_timeout)
        self.publishes: Batcher[tuple[Publication, float, int, str | None], list[Subscription] | None] = _batcher(
            self._publish_one, self._publish_many
        )
        self.notifies: Batcher[
            tuple[list[str], str, str, float], tuple[dict[str, tuple[int, int]], list[Publication]]
        ] = _batcher(self._notify_one, self._notify_many)
        self.subscribes: Batcher[tuple[Subscription, float, str | None], tuple[list[Publication], int]] = _batcher(
            self._subscribe_one, self._subscribe_many
        )
        #: The node whose NOTIFYs this storage counts, when only a tag's
        #: sender may send (service/owners.py; set by ChangeFeed.start):
        #: CSeqs are counted only under the tags it sends for (migration 7).
        self.sender: str | None = None
        #: usage(): [presentities, publications, subscriptions, registrations]
        #: at the last recount plus this node's inserts since, and the same
        #: per source IP.
        self._counts = [0, 0, 0, 0]
        self._by_source: dict[str, int] = {}

    async def start(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self.open_timeout)
            async with self.pool.connection() as conn:
                await migrate(conn)
        except (psycopg.Error, StorageUnavailable) as e:
            await self.pool.close()
            raise StorageUnavailable(f"PostgreSQL unavailable: {e}") from e

    async def close(self) -> None:
        await self.publishes.close()
        await self.subscribes.close()
        await self.notifies.close()
        await self.pool.close()

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    async def _rows(self, sql: str, params: Any = None, *, raw: bool = False) -> list[tuple[Any, ...]]:
        """The rows of one statement; ``raw``: placeholders are ``$n``."""
        leases = self.pool
        conn = await leases.acquire()
        try:
            check_deadline(request_deadline.get())  # never apply a request its client gave up on
            cur = leases.cursor(conn, raw)
            # Binary results: no text parsing of numbers and bytea.
            await cur.execute(sql, params, prepare=True, binary=True)
            # pgresult.nfields, not cur.description: the latter builds a
            # Column object per column on every call, a third of the
            # driver's cost per query here.
            res = cur.pgresult
            rows = await cur.fetchall() if res is not None and res.nfields else []
        except psycopg.OperationalError as e:
            if not unavailable(e):
                leases.done(conn)
                raise
            raise leases.failed(conn, e) from e
        except BaseException:
            # A failed statement leaves a healthy connection idle (autocommit);
            # a broken or cancelled one goes back to the pool.
            leases.done(conn)
            raise
        leases.release(conn)
        return rows

    async def _batch(
        self, function: str, columns: str, ncolumns: int, calls: list[Sequence[Any]],
        lock: str | None = None, presentities: Sequence[str] = (),
    ) -> list[list[tuple[Any, ...]]]:
        """Several calls of a hot function as one statement (_batch_sql),
        the presentities' buckets locked first when ``lock`` says how; the
        rows per call, in call order."""
        sql = _batch_sql(columns, function, len(calls[0]), ncolumns, len(calls), lock)
        params: list[Any] = list(presentities) if lock is not None else []
        for args in calls:
            params.extend(args)
        return _by_index(await self._rows(sql, params, raw=True), len(calls))

    async def _one(self, sql: str, params: Any = None) -> tuple[Any, ...] | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    # -- publications ------------------------------------------------------

    def _added(self, kind: int, source: str) -> None:
        """This node stored a record: count it until the next recount."""
        self._counts[kind] += 1
        if source:
            self._by_source[source] = self._by_source.get(source, 0) + 1

    async def insert_publication_watched(
        self, pub: Publication, now: float, sender: str | None = None, *, cap: int | None = None
    ) -> list[Subscription]:
        # One statement: the cap, the insert and the watcher lookup in
        # presence_publish (migrations 3 and 6; the presentity lock orders
        # it against subscribe; migration 6 routes the watchers), shared
        # with other PUBLISHes under load.
        watchers = await self.publishes.run((pub, now, NO_CAP if cap is None else cap, sender))
        if watchers is None:
            raise PresentityFull(pub.presentity, pub.event)
        self._added(1, pub.source)
        return watchers

    @staticmethod
    def _publish_params(pub: Publication, now: float, cap: int, sender: str | None) -> tuple[Any, ...]:
        return (*_publish_fields(pub), now, pub.source, Int8(cap), sender)

    @staticmethod
    def _publish_result(rows: list[tuple[Any, ...]]) -> list[Subscription] | None:
        # At the cap, one row of NULLs and nothing stored.
        if rows and rows[0][0] is None:
            return None
        return [_sub(r) for r in rows]

    async def _publish_one(self, item: tuple[Publication, float, int, str | None]) -> list[Subscription] | None:
        return self._publish_result(await self._rows(_PUBLISH_ONE, self._publish_params(*item)))

    async def _publish_many(
        self, items: list[tuple[Publication, float, int, str | None]]
    ) -> list[list[Subscription] | None]:
        # In presentity order, as _notify_many: the calls may row-lock
        # notify_queue rows (migration 6), so two nodes' batches take them
        # in the same order.
        order = sorted(range(len(items)), key=lambda i: (items[i][0].presentity, items[i][0].event))
        per_call = await self._batch(
            "presence_publish", _SUB_COLUMNS, len(SUB_FIELDS), [self._publish_params(*items[i]) for i in order],
            "shared", [items[i][0].presentity for i in order],
        )
        out: list[list[Subscription] | None] = [None] * len(items)
        for position, i in enumerate(order):
            out[i] = self._publish_result(per_call[position])
        return out

    async def replace_publication(
        self, presentity: str, event: str, etag: str, now: float, *,
        new_etag: str, expires_at: float, body: bytes | None = None, content_type: str | None = None,
    ) -> Publication | None:
        if body is None:
            row = await self._one(
                f"UPDATE publications SET etag = %s, expires_at = %s, origin = ''"
                f" WHERE presentity = %s AND event = %s AND etag = %s AND expires_at > %s RETURNING {_PUB_COLUMNS}",
                (new_etag, expires_at, presentity, event, etag, now),
            )
        else:
            row = await self._one(
                f"UPDATE publications SET etag = %s, expires_at = %s, body = %s, content_type = COALESCE(%s, content_type), received_at = %s, origin = ''"
                f" WHERE presentity = %s AND event = %s AND etag = %s AND expires_at > %s RETURNING {_PUB_COLUMNS}",
                (new_etag, expires_at, body, content_type, now, presentity, event, etag, now),
            )
        return _pub(row) if row else None

    async def delete_publication(self, presentity: str, event: str, etag: str, now: float) -> Publication | None:
        row = await self._one(
            f"DELETE FROM publications WHERE presentity = %s AND event = %s AND etag = %s AND expires_at > %s"
            f" RETURNING {_PUB_COLUMNS}",
            (presentity, event, etag, now),
        )
        return _pub(row) if row else None

    async def publications(self, presentity: str, event: str, now: float) -> list[Publication]:
        rows = await self._rows(
            f"SELECT {_PUB_COLUMNS} FROM publications WHERE presentity = %s AND event = %s AND expires_at > %s"
            " ORDER BY received_at, etag",
            (presentity, event, now),
        )
        return [_pub(r) for r in rows]

    async def apply_remote(self, presentity: str, event: str, old_etag: str | None, new: Publication | None) -> bool:
        async with self.pool.connection() as conn, conn.transaction():
            changed = False
            if old_etag:
                cur = await conn.execute(
                    "DELETE FROM publications WHERE presentity = %s AND event = %s AND etag = %s",
                    (presentity, event, old_etag),
                )
                changed = cur.rowcount > 0
            if new is not None:
                await conn.execute(
                    _INSERT_PUB + " ON CONFLICT (etag) DO UPDATE SET body = excluded.body, content_type = excluded.content_type,"
                    " expires_at = excluded.expires_at, received_at = excluded.received_at, origin = excluded.origin",
                    _pub_params(new),
                )
                changed = True
            return changed

    async def replace_replicas(
        self, origin: str, keys: Collection[tuple[str, str]], pubs: list[Publication], now: float
    ) -> set[tuple[str, str]]:
        async with self.pool.connection() as conn, conn.transaction():
            # Several buckets: locked first, in order (migration 4).
            await conn.execute(
                "SELECT presence_lock_buckets(%s::text[], false)",
                ([k[0] for k in keys] + [p.presentity for p in pubs],),
            )
            cur = await conn.execute(
                f"SELECT {_PUB_COLUMNS} FROM publications WHERE origin = %s"
                " AND (presentity, event) IN (SELECT * FROM unnest(%s::text[], %s::text[])) FOR UPDATE",
                (origin, [k[0] for k in keys], [k[1] for k in keys]),
            )
            have = [_pub(r) for r in await cur.fetchall()]
            changed = differing_keys(have, pubs)
            gone = [p.etag for p in have if (p.presentity, p.event) in changed]
            if gone:
                await conn.execute("DELETE FROM publications WHERE etag = ANY(%s)", (gone,))
            for p in pubs:
                if (p.presentity, p.event) in changed:
                    await conn.execute(_INSERT_PUB + " ON CONFLICT (etag) DO NOTHING", _pub_params(p))
            return changed

    async def replica_keys(self, origin: str) -> set[tuple[str, str]]:
        rows = await self._rows("SELECT DISTINCT presentity, event FROM publications WHERE origin = %s", (origin,))
        return {(r[0], r[1]) for r in rows}

    async def held_publications(self, keys: Collection[tuple[str, str]] | None, now: float) -> list[Publication]:
        if keys is None:
            rows = await self._rows(
                f"SELECT {_PUB_COLUMNS} FROM publications WHERE origin = '' AND expires_at > %s"
                " ORDER BY presentity, event, received_at",
                (now,),
            )
        else:
            rows = await self._rows(
                f"SELECT {_PUB_COLUMNS} FROM publications WHERE origin = '' AND expires_at > %s"
                " AND (presentity, event) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
                " ORDER BY presentity, event, received_at",
                (now, [k[0] for k in keys], [k[1] for k in keys]),
            )
        return [_pub(r) for r in rows]

    async def forget_replicas(self, presentity: str, event: str) -> None:
        await self._rows(
            "DELETE FROM publications WHERE presentity = %s AND event = %s AND origin <> ''", (presentity, event)
        )

    async def watched_keys(self, events: Collection[str], now: float) -> set[tuple[str, str]]:
        rows = await self._rows(
            "SELECT DISTINCT presentity, event FROM subscriptions WHERE event = ANY(%s) AND expires_at > %s",
            (list(events), now),
        )
        return {(r[0], r[1]) for r in rows}

    async def expire_publications(self, now: float, node: str) -> list[Publication]:
        # presence_expire_publications (migration 4): the sweep of owned,
        # expired rows, their buckets locked first in order.
        rows = await self._rows(
            f"SELECT {_PUB_COLUMNS} FROM presence_expire_publications(%s, %s, %s)", (node, now, EXPIRY_BATCH)
        )
        return [_pub(r) for r in rows]

    # -- subscriptions -----------------------------------------------------

    async def insert_subscription(self, sub: Subscription) -> None:
        await self._rows(_INSERT_SUB, _sub_params(sub))
        self._added(2, source_ip(sub.source))

    async def insert_subscription_state(
        self, sub: Subscription, now: float, watchers_of: str | None = None
    ) -> tuple[list[Publication], int]:
        # One statement (presence_subscribe, migration 3), shared with other
        # SUBSCRIBEs under load.
        state = await self.subscribes.run((sub, now, watchers_of))
        self._added(2, source_ip(sub.source))
        return state

    @staticmethod
    def _subscribe_params(sub: Subscription, now: float, watchers_of: str | None) -> tuple[Any, ...]:
        return (*_sub_params(sub), now, watchers_of)

    @staticmethod
    def _subscribe_result(rows: list[tuple[Any, ...]]) -> tuple[list[Publication], int]:
        # One row per publication, or one row of NULLs after the count.
        count = int(rows[0][0]) if rows else 0
        return [_pub(r[1:]) for r in rows if r[3] is not None], count

    async def _subscribe_one(self, item: tuple[Subscription, float, str | None]) -> tuple[list[Publication], int]:
        return self._subscribe_result(await self._rows(_SUBSCRIBE_ONE, self._subscribe_params(*item)))

    async def _subscribe_many(
        self, items: list[tuple[Subscription, float, str | None]]
    ) -> list[tuple[list[Publication], int]]:
        per_call = await self._batch(
            "presence_subscribe", "*", _SUBSCRIBE_NCOLUMNS, [self._subscribe_params(*item) for item in items],
            "exclusive", [sub.presentity for sub, _, _ in items],
        )
        return [self._subscribe_result(rows) for rows in per_call]

    async def subscription(self, sub_id: str) -> Subscription | None:
        row = await self._one(f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE id = %s", (sub_id,))
        return _sub(row) if row else None

    async def refresh_subscription(
        self, sub_id: str, *, expires_at: float, remote_cseq: int, contact: str | None = None
    ) -> Subscription | None:
        row = await self._one(
            f"UPDATE subscriptions SET expires_at = %s, remote_cseq = %s, contact = COALESCE(%s, contact)"
            f" WHERE id = %s RETURNING {_SUB_COLUMNS}",
            (expires_at, remote_cseq, contact, sub_id),
        )
        return _sub(row) if row else None

    async def delete_subscription(self, sub_id: str, *, owner: str | None = None) -> Subscription | None:
        if owner is None:
            row = await self._one(f"DELETE FROM subscriptions WHERE id = %s RETURNING {_SUB_COLUMNS}", (sub_id,))
        else:
            row = await self._one(
                f"""
                DELETE FROM subscriptions s USING sharing_tags t
                WHERE s.id = %s AND t.name = s.tag AND t.owner = %s
                RETURNING {_columns(SUB_FIELDS, "s")}
                """,
                (sub_id, owner),
            )
        return _sub(row) if row else None

    async def watchers(self, presentity: str, event: str, now: float, sender: str | None = None) -> list[Subscription]:
        if sender is not None:  # one statement, the others queued (migration 6)
            rows = await self._rows(
                f"SELECT {_SUB_COLUMNS} FROM presence_route(%s, %s, %s, %s)", (presentity, event, now, sender)
            )
        else:
            rows = await self._rows(
                f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE presentity = %s AND event = %s AND expires_at > %s",
                (presentity, event, now),
            )
        return [_sub(r) for r in rows]

    async def next_notify(self, sub_ids: Collection[str]) -> dict[str, tuple[int, int]]:
        if not sub_ids:
            return {}
        if self.sender is not None:  # the counts of a change without its state (no presentity)
            rows = await self._rows(
                "SELECT o_id, o_cseq, o_version FROM presence_next_notify(%s, NULL, NULL, 0, %s)",
                (list(sub_ids), self.sender),
            )
        else:
            rows = await self._rows(
                "UPDATE subscriptions SET cseq = cseq + 1, version = version + 1 WHERE id = ANY(%s)"
                " RETURNING id, cseq, version - 1",
                (list(sub_ids),),
            )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def next_notify_state(
        self, sub_ids: Collection[str], presentity: str, event: str, now: float
    ) -> tuple[dict[str, tuple[int, int]], list[Publication]]:
        # One statement, shared with other state changes under load.
        return await self.notifies.run((list(sub_ids), presentity, event, now))

    @staticmethod
    def _notify_result(rows: list[tuple[Any, ...]]) -> tuple[dict[str, tuple[int, int]], list[Publication]]:
        # The increments and the publications, told apart by the first
        # column (NULL on publication rows).
        numbers: dict[str, tuple[int, int]] = {}
        pubs: list[Publication] = []
        for r in rows:
            if r[0] is not None:
                numbers[r[0]] = (int(r[1]), int(r[2]))
            else:
                pubs.append(_pub(r[3:]))
        pubs.sort(key=lambda p: (p.received_at, p.etag))
        return numbers, pubs

    async def _notify_one(
        self, item: tuple[list[str], str, str, float]
    ) -> tuple[dict[str, tuple[int, int]], list[Publication]]:
        if self.sender is not None:
            return self._notify_result(await self._rows(_NOTIFY_ONE_SENDER, (*item, self.sender)))
        return self._notify_result(await self._rows(_NOTIFY_ONE, item))

    async def _notify_many(
        self, items: list[tuple[list[str], str, str, float]]
    ) -> list[tuple[dict[str, tuple[int, int]], list[Publication]]]:
        # Each call row-locks its watchers: calls run in presentity order
        # (stable, so one presentity's keep their order), which two nodes'
        # batches share, so they cannot deadlock on those rows.
        order = sorted(range(len(items)), key=lambda i: (items[i][1], items[i][2]))
        calls: list[Sequence[Any]] = [items[i] for i in order]
        if self.sender is not None:
            calls = [(*c, self.sender) for c in calls]
        split = await self._batch("presence_next_notify", "*", _NOTIFY_NCOLUMNS, calls)
        out: list[tuple[dict[str, tuple[int, int]], list[Publication]]] = [({}, [])] * len(items)
        for position, i in enumerate(order):
            out[i] = self._notify_result(split[position])
        return out

    async def expire_subscriptions(self, now: float, node: str) -> list[Subscription]:
        rows = await self._rows(
            f"""
            WITH owned AS (SELECT name FROM sharing_tags WHERE owner = %(node)s FOR SHARE),
            victims AS (
                SELECT s.id FROM subscriptions s JOIN owned ON s.tag = owned.name
                WHERE s.expires_at <= %(now)s LIMIT {EXPIRY_BATCH} FOR UPDATE OF s SKIP LOCKED
            )
            DELETE FROM subscriptions s USING victims WHERE s.id = victims.id RETURNING {_columns(SUB_FIELDS, "s")}
            """,
            {"node": node, "now": now},
        )
        return [_sub(r) for r in rows]

    # -- registrations -----------------------------------------------------

    async def set_binding(self, reg: Registration) -> None:
        # xmax = 0: the row is new (not a refresh), for usage().
        row = await self._one(
            _INSERT_REG + " ON CONFLICT (aor, contact) DO UPDATE SET expires_at = EXCLUDED.expires_at,"
            " call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq, tag = EXCLUDED.tag, source = EXCLUDED.source"
            " RETURNING xmax = 0",
            _reg_params(reg),
        )
        if row is not None and row[0]:
            self._added(3, reg.source)

    async def delete_binding(self, aor: str, contact: str) -> None:
        await self._rows("DELETE FROM registrations WHERE aor = %s AND contact = %s", (aor, contact))

    async def bindings(self, aor: str, now: float) -> list[Registration]:
        rows = await self._rows(
            f"SELECT {_REG_COLUMNS} FROM registrations WHERE aor = %s AND expires_at > %s ORDER BY contact",
            (aor, now),
        )
        return [Registration(*r) for r in rows]

    async def expire_registrations(self, now: float, node: str) -> list[Registration]:
        # As expire_subscriptions: owned tags share-locked, victims locked
        # SKIP LOCKED; untagged bindings (from before migration 6) by anyone.
        # Two scans, so each uses the (tag, expires_at) index.
        rows = await self._rows(
            f"""
            WITH owned AS (SELECT name FROM sharing_tags WHERE owner = %(node)s FOR SHARE),
            mine AS (
                SELECT r.aor, r.contact FROM registrations r JOIN owned ON r.tag = owned.name
                WHERE r.expires_at <= %(now)s LIMIT {EXPIRY_BATCH} FOR UPDATE OF r SKIP LOCKED
            ),
            untagged AS (
                SELECT r.aor, r.contact FROM registrations r WHERE r.tag IS NULL AND r.expires_at <= %(now)s
                LIMIT {EXPIRY_BATCH} FOR UPDATE OF r SKIP LOCKED
            ),
            victims AS (SELECT * FROM mine UNION ALL SELECT * FROM untagged)
            DELETE FROM registrations r USING victims v WHERE r.aor = v.aor AND r.contact = v.contact
            RETURNING {_reg_columns("r")}
            """,
            {"node": node, "now": now},
        )
        return [Registration(*r) for r in rows]

    async def list_registrations(self, now: float, *, aor: str | None, offset: int, limit: int) -> list[Registration]:
        rows = await self._rows(
            f"SELECT {_REG_COLUMNS} FROM registrations WHERE expires_at > %(now)s"
            " AND (%(aor)s::text IS NULL OR aor = %(aor)s) ORDER BY aor, contact OFFSET %(o)s LIMIT %(l)s",
            {"now": now, "aor": aor, "o": offset, "l": limit},
        )
        return [Registration(*r) for r in rows]

    # -- sharing tags -----------------------------------------------------------

    async def ensure_tags(self, configured: Mapping[str, bool], node: str, now: float) -> None:
        for name, active in configured.items():
            await self._rows(
                f"""
                INSERT INTO sharing_tags ({_TAG_COLUMNS}) VALUES (%(name)s, %(owner)s, %(epoch)s, %(now)s)
                ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, epoch = sharing_tags.epoch + 1,
                    since = EXCLUDED.since
                WHERE sharing_tags.owner IS NULL AND EXCLUDED.owner IS NOT NULL
                """,
                {"name": name, "owner": node if active else None, "epoch": 1 if active else 0, "now": now},
            )

    async def tags(self) -> list[TagState]:
        return [_tag(r) for r in await self._rows(f"SELECT {_TAG_COLUMNS} FROM sharing_tags ORDER BY name")]

    async def activate_tag(self, name: str, node: str, now: float, epoch: int | None = None) -> TagState:
        async with self.pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(
                    f"SELECT {_TAG_COLUMNS} FROM sharing_tags WHERE name = %s FOR UPDATE", (name,)
                )
                row = await cur.fetchone()
                if row is None:
                    raise UnknownTag(name)
                current = _tag(row)
                if epoch is not None and epoch <= current.epoch:
                    raise StaleEpoch(current)
                new_epoch = current.epoch + 1 if epoch is None else epoch
                cur = await conn.execute(
                    "UPDATE sharing_tags SET owner = %s, epoch = %s, since = %s WHERE name = %s"
                    f" RETURNING {_TAG_COLUMNS}",
                    (node, new_epoch, now, name),
                )
                updated = await cur.fetchone()
                assert updated is not None
                return _tag(updated)

    async def deactivate_tag(self, name: str, node: str, now: float) -> TagState:
        row = await self._one(
            "UPDATE sharing_tags SET owner = NULL, epoch = epoch + 1, since = %s WHERE name = %s AND owner = %s"
            f" RETURNING {_TAG_COLUMNS}",
            (now, name, node),
        )
        if row is not None:
            return _tag(row)
        row = await self._one(f"SELECT {_TAG_COLUMNS} FROM sharing_tags WHERE name = %s", (name,))
        if row is None:
            raise UnknownTag(name)
        return _tag(row)

    # -- admin listing -----------------------------------------------------

    async def list_presentities(self, now: float, *, event: str | None, offset: int, limit: int) -> list[Publication]:
        rows = await self._rows(
            f"SELECT {_PUB_COLUMNS} FROM publications WHERE expires_at > %s AND (%s::text IS NULL OR event = %s)"
            " ORDER BY presentity, event, received_at, etag OFFSET %s LIMIT %s",
            (now, event, event, offset, limit),
        )
        return [_pub(r) for r in rows]

    async def list_subscriptions(
        self, now: float, *, presentity: str | None, watcher: str | None, event: str | None, offset: int, limit: int
    ) -> list[Subscription]:
        rows = await self._rows(
            f"SELECT {_SUB_COLUMNS} FROM subscriptions WHERE expires_at > %(now)s"
            " AND (%(p)s::text IS NULL OR presentity = %(p)s) AND (%(w)s::text IS NULL OR watcher = %(w)s)"
            " AND (%(e)s::text IS NULL OR event = %(e)s)"
            " ORDER BY presentity, event, id OFFSET %(o)s LIMIT %(l)s",
            {"now": now, "p": presentity, "w": watcher, "e": event, "o": offset, "l": limit},
        )
        return [_sub(r) for r in rows]

    async def counts(self) -> tuple[int, int]:
        row = await self._one(
            "SELECT (SELECT count(*) FROM subscriptions), (SELECT count(DISTINCT presentity) FROM publications)"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    def usage(self) -> Usage:
        c = self._counts
        return Usage(c[0], c[1], c[2], c[3], self._by_source)

    async def refresh_usage(self, source_floor: int) -> None:
        rows = await self._rows(_RECOUNT, (max(source_floor, 1),))
        totals = {r[0]: int(r[2]) for r in rows if r[0] != "source"}
        self._counts = [totals[k] for k in ("presentities", "publications", "subscriptions", "registrations")]
        self._by_source = {r[1]: int(r[2]) for r in rows if r[0] == "source"}

    # -- subscribers (#15.1) -------------------------------------------------

    async def subscriber(self, username: str, realm: str) -> Subscriber | None:
        row = await self._one(f"SELECT {_SUBSCRIBER} FROM subscribers WHERE username = %s AND realm = %s",
                              (username, realm))
        return Subscriber(*row) if row is not None else None

    async def put_subscriber(self, s: Subscriber) -> bool:
        """Create or replace ``s``; True if it is new."""
        row = await self._one(
            f"INSERT INTO subscribers ({_SUBSCRIBER}) VALUES ({_placeholders(len(SUBSCRIBER_FIELDS))}) ON CONFLICT (username, realm)"
            " DO UPDATE SET aor = EXCLUDED.aor, ha1_md5 = EXCLUDED.ha1_md5, ha1_sha256 = EXCLUDED.ha1_sha256"
            " RETURNING xmax = 0",
            tuple(s),
        )
        return bool(row and row[0])

    async def delete_subscriber(self, username: str, realm: str) -> bool:
        rows = await self._rows("DELETE FROM subscribers WHERE username = %s AND realm = %s RETURNING 1",
                                (username, realm))
        return bool(rows)

    async def list_subscribers(self, *, offset: int, limit: int) -> list[Subscriber]:
        rows = await self._rows(f"SELECT {_SUBSCRIBER} FROM subscribers ORDER BY realm, username OFFSET %s LIMIT %s",
                                (offset, limit))
        return [Subscriber(*r) for r in rows]

    # -- watcher rules (#15.3) ----------------------------------------------

    async def set_watcher_rule(self, presentity: str, watcher: str, allow: bool | None) -> bool:
        existed = await self._rows(
            "DELETE FROM watcher_rules WHERE presentity = %s AND watcher = %s RETURNING 1", (presentity, watcher)
        ) if allow is None else await self._rows(
            "WITH old AS (SELECT 1 FROM watcher_rules WHERE presentity = %s AND watcher = %s)"
            " INSERT INTO watcher_rules (presentity, watcher, allow) VALUES (%s, %s, %s)"
            " ON CONFLICT (presentity, watcher) DO UPDATE SET allow = EXCLUDED.allow"
            " RETURNING (SELECT count(*) FROM old) > 0",
            (presentity, watcher, presentity, watcher, allow),
        )
        return bool(existed) and (allow is None or bool(existed[0][0]))

    async def watcher_rule(self, presentity: str, watcher: str) -> bool | None:
        row = await self._one("SELECT allow FROM watcher_rules WHERE presentity = %s AND watcher = %s",
                              (presentity, watcher))
        return bool(row[0]) if row is not None else None

    async def watcher_rules(self, presentity: str) -> dict[str, bool]:
        rows = await self._rows("SELECT watcher, allow FROM watcher_rules WHERE presentity = %s ORDER BY watcher",
                                (presentity,))
        return {r[0]: bool(r[1]) for r in rows}

    def queue_delay(self) -> float:
        now = asyncio.get_running_loop().time()
        return max(self.publishes.backlog(now), self.subscribes.backlog(now), self.notifies.backlog(now))

    def batch_counts(self) -> dict[str, tuple[int, int, int, int]]:
        return {
            kind: (b.batches, b.batched, b.retried, b.overdue)
            for kind, b in (("publish", self.publishes), ("subscribe", self.subscribes), ("notify", self.notifies))
        }


async def migrate(conn: AsyncConnection[Any]) -> int:
    """Bring the schema to the newest version; returns it.  Serialised by a
    transaction-level advisory lock, so concurrent starts apply each
    migration once; only ever adds, never drops data."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for sql in statements:
                await conn.execute(sql)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            log.info("schema migrated", extra={"version": version})
        return len(MIGRATIONS)

