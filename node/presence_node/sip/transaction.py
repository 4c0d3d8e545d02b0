"""Non-INVITE transactions (RFC 3261 §17.1.2, §17.2.2), sans-I/O.

The node is a UAS for SUBSCRIBE, PUBLISH, REGISTER and OPTIONS and a UAC for
the NOTIFYs it sends; both are non-INVITE transactions.  The tables below hold
no sockets and no timers: the caller feeds them the time and asks what is due,
and keeps one wake-up at :meth:`ClientTransactions.next_deadline`.

Server side (S03): a retransmitted request is matched by branch, sent-by and
method and answered with the stored final response; while the first copy is
still being processed, retransmissions are absorbed silently.  Completed
entries are kept for Timer J (64*T1 over UDP, 0 over TCP), within a byte
budget: what the table holds is counted (keys, responses and a fixed
per-entry overhead), and over the budget the oldest completed entries are
forgotten before their Timer J.  They are the least likely to be asked for
again (a client retransmits at T1, 2*T1, ... T2), and the caller stores
compact responses (response.Final), so that happens only under a flood; a
retransmission of a forgotten request is then processed as a new request.
Keys and origins are built from values the peer chooses: past
:data:`MAX_KEY` characters they are held as a digest.  A request
without a To tag whose From tag, Call-ID and CSeq (and method) are those of
a transaction still held, but which is not that transaction, is a merged
request (RFC 3261 §8.2.2.2: it forked and arrived again by another path):
:data:`MERGED`, for a 482.

Client side (S26): a NOTIFY over UDP is retransmitted on Timer E (T1,
doubling up to T2; T2 once a provisional arrived) until a final response or
Timer F (64*T1), which times the transaction out.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

T1 = 0.5
T2 = 4.0

#: Returned by :meth:`ServerTransactions.begin` for a retransmission of a
#: request that has no final response yet: absorb it.
IN_PROGRESS = b""
#: Returned by :meth:`ServerTransactions.begin` for a merged request (482).
MERGED = b"\x00merged"

#: Longest key or origin held as is; longer ones are held as a digest.
MAX_KEY = 96
#: Bytes counted per completed entry beyond the characters of its key and
#: response (the objects' headers, the dict slots, the expiry record), and
#: for an origin beyond its characters (two more dict slots).  Measured with
#: tracemalloc, a PUBLISH or in-dialog SUBSCRIBE entry holds about 510
#: bytes and an out-of-dialog OPTIONS 850, a little less than counted.
ENTRY_OVERHEAD = 400
ORIGIN_OVERHEAD = 150


def _bounded(s: str) -> str:
    if len(s) <= MAX_KEY:
        return s
    return "\x02" + hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class ServerTransactions:
    """The non-INVITE server transaction table.

    It holds what the caller hands to :meth:`complete` (bytes, or a compact
    response), counted at ``size`` bytes, and hands it back on a
    retransmission."""

    __slots__ = ("_table", "_expiry", "_origins", "_origin_of", "t1", "budget", "retained", "evicted")

    def __init__(self, t1: float = T1, budget: int = 32 * 1024 * 1024) -> None:
        self._table: dict[str, object] = {}
        #: Completed entries in completion order: (Timer J deadline, key, bytes counted).
        self._expiry: deque[tuple[float, str, int]] = deque()
        #: Merged-request detection: origin (From tag, Call-ID, CSeq,
        #: method) of each held out-of-dialog transaction -> its key, and back.
        self._origins: dict[str, str] = {}
        self._origin_of: dict[str, str] = {}
        self.t1 = t1
        #: Most bytes the completed entries may hold.
        self.budget = budget
        #: Bytes the completed entries hold now.
        self.retained = 0
        #: Completed entries forgotten before their Timer J, for the budget.
        self.evicted = 0

    @staticmethod
    def key(branch: str | None, sent_by: str, method: str, fallback: str) -> str:
        """RFC 3261 §17.2.3: branch+sent-by+method, or RFC 2543 matching."""
        if branch and branch.startswith("z9hG4bK"):
            return _bounded(f"{branch}\x00{sent_by}\x00{method}")
        return _bounded(f"\x01{fallback}\x00{method}")

    @staticmethod
    def origin(from_tag: str, call_id: str, cseq: int, method: str) -> str:
        """What identifies a request across forks (RFC 3261 §8.2.2.2)."""
        return _bounded(f"{from_tag}\x00{call_id}\x00{cseq}\x00{method}")

    def begin(self, key: str, origin: str | None = None) -> object | None:
        """None for a new request (now in progress); otherwise the stored
        final response to resend, :data:`IN_PROGRESS` to absorb, or
        :data:`MERGED`.  ``origin``: for a request without a To tag."""
        stored = self._table.get(key)
        if stored is not None:
            return stored
        if origin is not None:
            other = self._origins.get(origin)
            if other is not None and other in self._table:
                return MERGED
            self._origins[origin] = key
            self._origin_of[key] = origin
        self._table[key] = IN_PROGRESS
        return None

    def get(self, key: str) -> object | None:
        """What :meth:`begin` would return for a retransmission, without
        starting a transaction: the stored final response,
        :data:`IN_PROGRESS`, or None when there is no such transaction."""
        return self._table.get(key)

    def exists(self, key: str) -> bool:
        return key in self._table

    def complete(self, key: str, response: object, now: float, reliable: bool, size: int | None = None) -> None:
        """Record the final response (``size``: bytes it holds, default its
        length); keep it for Timer J, within the budget."""
        if reliable:
            self._forget(key)
            return
        self._table[key] = response
        if size is None:
            assert isinstance(response, bytes), "give the size of anything but bytes"
            size = len(response)
        counted = size + len(key) + ENTRY_OVERHEAD
        origin = self._origin_of.get(key)
        if origin is not None:
            counted += len(origin) + ORIGIN_OVERHEAD
        self._expiry.append((now + 64 * self.t1, key, counted))
        self.retained += counted
        exp = self._expiry
        while self.retained > self.budget:
            _, old, n = exp.popleft()
            self._forget(old)
            self.retained -= n
            self.evicted += 1

    def abandon(self, key: str) -> None:
        """Forget a request that got no response (dropped by policy)."""
        if self._table.get(key) == IN_PROGRESS:
            self._forget(key)

    def sweep(self, now: float) -> None:
        exp = self._expiry
        while exp and exp[0][0] <= now:
            _, key, n = exp.popleft()
            self._forget(key)
            self.retained -= n

    def _forget(self, key: str) -> None:
        self._table.pop(key, None)
        origin = self._origin_of.pop(key, None)
        if origin is not None and self._origins.get(origin) == key:
            del self._origins[origin]

    def __len__(self) -> int:
        return len(self._table)


@dataclass(slots=True)
class ClientTransaction:
    branch: str
    data: bytes
    dest: Any  # opaque to the core: where the shell sends ``data``
    reliable: bool
    context: Any  # opaque: what the sender wants back on completion
    deadline: float  # Timer F
    next_retransmit: float  # Timer E (inf when reliable)
    interval: float
    proceeding: bool = False
    gen: int = field(default=0)


RETRANSMIT = "retransmit"
TIMEOUT = "timeout"


class ClientTransactions:
    """The non-INVITE client transaction table, one heap for E and F."""

    __slots__ = ("_table", "_heap", "_seq", "t1", "t2")

    def __init__(self, t1: float = T1, t2: float = T2) -> None:
        self._table: dict[str, ClientTransaction] = {}
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self.t1 = t1
        self.t2 = t2

    def start(self, branch: str, data: bytes, dest: Any, reliable: bool, context: Any, now: float) -> None:
        deadline = now + 64 * self.t1
        nxt = float("inf") if reliable else now + self.t1
        txn = ClientTransaction(branch, data, dest, reliable, context, deadline, nxt, self.t1)
        self._table[branch] = txn
        self._push(txn)

    def _push(self, txn: ClientTransaction) -> None:
        txn.gen += 1
        heapq.heappush(self._heap, (min(txn.deadline, txn.next_retransmit), next(self._seq), txn.branch, txn.gen))

    def on_response(self, branch: str, code: int, now: float) -> ClientTransaction | None:
        """Match a response; return the transaction if it is now complete."""
        txn = self._table.get(branch)
        if txn is None:
            return None  # a stray or retransmitted response: ignore
        if code < 200:
            if not txn.proceeding and not txn.reliable:
                txn.proceeding = True
                txn.interval = self.t2
                txn.next_retransmit = now + self.t2
                self._push(txn)
            return None
        del self._table[branch]
        return txn

    def abort(self, branch: str) -> ClientTransaction | None:
        """End a transaction the caller gave up on (its message could not
        be sent, or its connection was closed); None if already ended."""
        return self._table.pop(branch, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            t, _, branch, gen = heap[0]
            txn = self._table.get(branch)
            if txn is not None and txn.gen == gen:
                return t
            heapq.heappop(heap)
        return None

    def due(self, now: float) -> list[tuple[str, ClientTransaction]]:
        """Pop what is due at ``now``: ``(RETRANSMIT, txn)`` (resend
        ``txn.data``) or ``(TIMEOUT, txn)`` (Timer F fired; it is gone)."""
        out: list[tuple[str, ClientTransaction]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, branch, gen = heapq.heappop(heap)
            txn = self._table.get(branch)
            if txn is None or txn.gen != gen:
                continue
            if txn.deadline <= now:
                del self._table[branch]
                out.append((TIMEOUT, txn))
                continue
            out.append((RETRANSMIT, txn))
            if not txn.proceeding:
                txn.interval = min(txn.interval * 2, self.t2)
            txn.next_retransmit = now + txn.interval
            self._push(txn)
        return out

    def __len__(self) -> int:
        return len(self._table)
