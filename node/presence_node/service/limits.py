"""Per-source rate limiting, so one flooding client cannot starve others."""

from __future__ import annotations


class SourceLimiter:
    """A token bucket per source IP (``rate`` per second, ``burst`` deep).

    Buckets that are full again are forgotten on the next sweep, so the table
    holds only sources that were recently busy.
    """

    __slots__ = ("rate", "burst", "_buckets", "_next_sweep")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._next_sweep = 0.0

    def allow(self, source: str, now: float) -> bool:
        if not self.rate:
            return True
        if now >= self._next_sweep:
            self._sweep(now)
        tokens, last = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1.0, now)
        return True

    def exhausted(self, source: str, now: float) -> bool:
        """Whether ``source`` has no token left now (none is spent)."""
        if not self.rate or source not in self._buckets:
            return False
        tokens, last = self._buckets[source]
        return tokens + (now - last) * self.rate < 1.0

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._next_sweep = now + 10.0
