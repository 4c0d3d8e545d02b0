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
under way is group commit at work, not a queue).  Once every delay has
been above the target for an interval (the first delay above it starts the
clock, any delay at or below it stops it, as in CoDel), the node sheds
every request whose delay is above the target, until an interval passes
without one.  Shedding drains the backlog much faster than serving it, so
the queue settles near the target and what is served waits about that long.

The clock runs from the first delay above the target, not over fixed
windows: with windows a queue that starts to stand mid-window was noticed
only at the end of the next one, up to two intervals later, and every
request admitted meanwhile was served that much later (at 2x the capacity
the delay grows by half the elapsed time), which is what the p99 of the
answered requests is made of.  A delay also tells how long the queue has
stood: requests are read in arrival order, so everything read since this
request had waited the target waited longer; after a stall of the node,
the second late request read can prove a standing queue, instead of an
interval of serving its backlog late.  CoDel's growing drop rate is not taken
over: it paces drops for senders that slow down when one packet is lost,
whereas each request here is its own client, and shedding exactly those
delayed beyond the target is what keeps the served ones within it.
"""

from __future__ import annotations

INF = float("inf")


class OverloadControl:
    """The shedding decision, fed with delays and the time; no I/O."""

    __slots__ = ("target", "interval", "shedding", "_above_since", "_last_over", "_last_timely")

    def __init__(self, target: float, interval: float) -> None:
        self.target = target
        self.interval = interval
        #: Whether requests delayed beyond the target are being shed.
        self.shedding = False
        self._above_since: float | None = None  # since when every delay was above the target
        self._last_over = 0.0  # when a delay above the target was last seen
        self._last_timely = -INF  # when a delay within the target was last seen

    def admit(self, delay: float, now: float) -> bool:
        """Whether to serve a request with this ``delay`` (else shed it)."""
        if delay <= self.target:
            self._above_since = None
            self._last_timely = now
            if self.shedding and now - self._last_over >= self.interval:
                self.shedding = False  # an interval without a delay above the target
            return True
        self._last_over = now
        if not self.shedding:
            if self._above_since is None:
                self._above_since = now  # a lone late request may be one stall of ours
            else:
                # Requests are read in arrival order: every one read since
                # this one had waited the target had waited longer too (not
                # quite, as the database's part is a different queue: never
                # before the last delay seen within the target).
                since = max(now - (delay - self.target), self._last_timely)
                self._above_since = min(self._above_since, since)
            self.shedding = now - self._above_since >= self.interval
        return not self.shedding
