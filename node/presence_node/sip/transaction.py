"""Non-INVITE transactions (RFC 3261 §17.1.2, §17.2.2), sans-I/O.

The node is a UAS for SUBSCRIBE, PUBLISH, REGISTER and OPTIONS and a UAC for
the NOTIFYs it sends; both are non-INVITE transactions.  The tables below hold
no sockets and no timers: the caller feeds them the time and asks what is due,
and keeps one wake-up at :meth:`ClientTransactions.next_deadline`.

Server side (S03): a retransmitted request is matched by branch, sent-by and
method and answered with the stored final response; while the first copy is
still being processed, retransmissions are absorbed silently.  Completed
entries are kept for Timer J (64*T1 over UDP, 0 over TCP).  A request
without a To tag whose From tag, Call-ID and CSeq (and method) are those of
a transaction still held, but which is not that transaction, is a merged
request (RFC 3261 §8.2.2.2: it forked and arrived again by another path):
:data:`MERGED`, for a 482.

Client side (S26): a NOTIFY over UDP is retransmitted on Timer E (T1,
doubling up to T2; T2 once a provisional arrived) until a final response or
Timer F (64*T1), which times the transaction out.
"""

from __future__ import annotations

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


class ServerTransactions:
    """The non-INVITE server transaction table."""

    __slots__ = ("_table", "_expiry", "_origins", "_origin_of", "t1")

    def __init__(self, t1: float = T1) -> None:
        self._table: dict[str, bytes] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        #: Merged-request detection: origin (From tag, Call-ID, CSeq,
        #: method) of each held out-of-dialog transaction -> its key, and back.
        self._origins: dict[str, str] = {}
        self._origin_of: dict[str, str] = {}
        self.t1 = t1

    @staticmethod
    def key(branch: str | None, sent_by: str, method: str, fallback: str) -> str:
        """RFC 3261 §17.2.3: branch+sent-by+method, or RFC 2543 matching."""
        if branch and branch.startswith("z9hG4bK"):
            return f"{branch}\x00{sent_by}\x00{method}"
        return f"\x01{fallback}\x00{method}"

    @staticmethod
    def origin(from_tag: str, call_id: str, cseq: int, method: str) -> str:
        """What identifies a request across forks (RFC 3261 §8.2.2.2)."""
        return f"{from_tag}\x00{call_id}\x00{cseq}\x00{method}"

    def begin(self, key: str, origin: str | None = None) -> bytes | None:
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

    def get(self, key: str) -> bytes | None:
        """What :meth:`begin` would return for a retransmission, without
        starting a transaction: the stored final response,
        :data:`IN_PROGRESS`, or None when there is no such transaction."""
        return self._table.get(key)

    def exists(self, key: str) -> bool:
        return key in self._table

    def complete(self, key: str, response: bytes, now: float, reliable: bool) -> None:
        """Record the final response; keep it for Timer J."""
        if reliable:
            self._forget(key)
            return
        self._table[key] = response
        self._expiry.append((now + 64 * self.t1, key))

    def abandon(self, key: str) -> None:
        """Forget a request that got no response (dropped by policy)."""
        if self._table.get(key) == IN_PROGRESS:
            self._forget(key)

    def sweep(self, now: float) -> None:
        exp = self._expiry
        while exp and exp[0][0] <= now:
            _, key = exp.popleft()
            self._forget(key)

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
