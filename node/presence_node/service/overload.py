"""Overload control: when saturated, shed the requests that waited too long.

Offered more than it can take, a node that serves requests in arrival
order serves every one of them late: the backlog sits in the socket's
receive buffer (seconds of requests) or in front of the database, clients
retransmit, and the node's whole capacity goes into answers nobody waits
for any more.  Answering the excess with a 503 that costs a sixth of
serving it keeps the queue short, so what is served is served in time.

Which requests are excess is CoDel's question (RFC 8289): a queue that
absorbs a burst drains within an interval, a standing queue does not, and
the smallest delay seen over an interval tells them apart.  A request's
delay is its queueing, not its service: the time it waited before we read
it (the kernel's receive time) plus how long requests have queued for the
database beyond what the next statements carry (waiting for the statement
under way is group commit at work, not a queue).  Once the smallest delay of an interval is
above the target, the node sheds every request whose delay is above the
target, until an interval passes without one.  Shedding drains the
backlog much faster than serving it, so the queue settles near the target
and what is served waits about that long.
"""

from __future__ import annotations

INF = float("inf")


class OverloadControl:
    """The shedding decision, fed with delays and the time; no I/O."""

    __slots__ = ("target", "interval", "shedding", "_end", "_min", "_over")

    def __init__(self, target: float, interval: float) -> None:
        self.target = target
        self.interval = interval
        #: Whether requests delayed beyond the target are being shed.
        self.shedding = False
        self._end = 0.0  # end of the current interval
        self._min = INF  # smallest delay seen in it
        self._over = False  # whether a delay above the target was seen in it

    def admit(self, delay: float, now: float) -> bool:
        """Whether to serve a request with this ``delay`` (else shed it)."""
        if now >= self._end:
            self._roll(now)
        if delay < self._min:
            self._min = delay
        if delay <= self.target:
            return True
        self._over = True
        return not self.shedding

    def _roll(self, now: float) -> None:
        if self._min != INF:  # the interval saw requests
            if not self.shedding:
                self.shedding = self._min > self.target
            elif not self._over:
                self.shedding = False
        self._end = now + self.interval
        self._min = INF
        self._over = False
