"""Which UDP addresses NOTIFYs may be sent to freely (#12.10, reflection).

A SUBSCRIBE names its Contact, so without a check anyone can make the node
send NOTIFYs, retransmitted up to eleven times each, to a third party's UDP
port: 100 poll SUBSCRIBEs of 45 KB became 1.72 MB of NOTIFYs.  So an
address is *unproven* until it answers a NOTIFY from that very address (a
response from elsewhere proves nothing: branches can be guessed).  Towards
an unproven address one NOTIFY, the probe, is in flight at a time, and the
bytes sent there (retransmissions included) stay within a budget; the
NOTIFYs that come meanwhile wait in its queue.  When the probe is
answered the address is proven and the queue goes out at once (a BLF phone
that subscribes to 100 presentities waits one round trip); when the probe
times out or cannot be sent, the queued NOTIFYs fail with the same code
(S26: a timeout removes their subscriptions, as Timer F would have).  So
what one SUBSCRIBE can make the node send to an address that never
answers is bounded by the budget, whatever the number of SUBSCRIBEs.

A proven address has no budget (each subscription still has at most one
NOTIFY in flight, D7); one whose NOTIFY times out is unproven again.
Both tables are bounded: the oldest proven address is forgotten first (it
re-proves itself in one round trip), and when the unproven table is full a
NOTIFY to a new address is refused.  Sans-I/O: the transport sends.
"""

from __future__ import annotations

from collections import deque
from typing import Any

Key = tuple[str, int]

#: :meth:`Targets.admit` answers.
SEND = 0
WAIT = 1
REFUSE = 2


class _Probe:
    __slots__ = ("branch", "sent", "queue")

    def __init__(self, branch: str, sent: int) -> None:
        self.branch = branch
        self.sent = sent
        self.queue: deque[tuple[str, int, Any]] = deque()  # (branch, size, item)


class Targets:
    __slots__ = ("budget", "max_proven", "max_unproven", "_proven", "_probes")

    def __init__(self, budget: int | None, max_proven: int, max_unproven: int) -> None:
        #: None: no anti-reflection at all (every address counts as proven).
        self.budget = budget
        self.max_proven = max_proven
        self.max_unproven = max_unproven
        self._proven: dict[Key, None] = {}  # insertion order = age
        self._probes: dict[Key, _Probe] = {}

    @property
    def proven(self) -> int:
        return len(self._proven)

    @property
    def unproven(self) -> int:
        return len(self._probes)

    def admit(self, key: Key, branch: str, size: int) -> int:
        """May a NOTIFY's first transmission go to ``key`` now?  SEND (it
        is counted; a new address makes it the probe), WAIT (then the
        caller hands it to :meth:`queue`), or REFUSE (too many unproven
        addresses)."""
        if self.budget is None or key in self._proven:
            return SEND
        probe = self._probes.get(key)
        if probe is not None:
            return WAIT
        if len(self._probes) >= self.max_unproven:
            return REFUSE
        self._probes[key] = _Probe(branch, size)
        return SEND

    def queue(self, key: Key, branch: str, size: int, item: Any) -> None:
        """Hold ``item`` (after WAIT) until :meth:`answered` or
        :meth:`failed` hands it back."""
        self._probes[key].queue.append((branch, size, item))

    def may_resend(self, key: Key, size: int) -> bool:
        """A retransmission to ``key``: within the budget (then counted)?"""
        probe = self._probes.get(key)
        if probe is None:
            return True
        if self.budget is not None and probe.sent + size > self.budget:
            return False
        probe.sent += size
        return True

    def answered(self, key: Key, branch: str, source: str) -> tuple[list[Any], list[Any]]:
        """The NOTIFY ``branch`` to ``key`` got a final response from
        ``source`` (an IP).  Returns the queued items now to be sent, and
        those that now fail (as on a timeout)."""
        probe = self._probes.get(key)
        if probe is None or probe.branch != branch:
            if key in self._proven and source == key[0]:
                del self._proven[key]  # most recently heard of: kept longest
                self._proven[key] = None
            return [], []
        if source != key[0]:
            return self._next(key, probe)
        del self._probes[key]
        if len(self._proven) >= self.max_proven:
            del self._proven[next(iter(self._proven))]
        self._proven[key] = None
        return [item for _, _, item in probe.queue], []

    def failed(self, key: Key, branch: str) -> list[Any]:
        """The NOTIFY ``branch`` to ``key`` timed out or could not be sent:
        ``key`` is unproven again.  Returns the queued items, which fail the
        same way."""
        self._proven.pop(key, None)
        probe = self._probes.get(key)
        if probe is None or probe.branch != branch:
            return []
        del self._probes[key]
        return [item for _, _, item in probe.queue]

    def _next(self, key: Key, probe: _Probe) -> tuple[list[Any], list[Any]]:
        """The probe ended without ``key`` answering it (the answer came
        from elsewhere): the next queued NOTIFY probes in its place if the
        budget allows its size; otherwise the queue fails."""
        if probe.queue:
            branch, size, item = probe.queue[0]
            if self.budget is not None and probe.sent + size <= self.budget:
                probe.queue.popleft()
                probe.branch = branch
                probe.sent += size
                return [item], []
        del self._probes[key]
        return [], [item for _, _, item in probe.queue]
