"""Prometheus metrics, one registry per node (several nodes may share a
process in tests).  Labelled children are cached: ``labels()`` is a dict
lookup plus a lock in prometheus-client, too slow for every packet."""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("sip_requests", "SIP requests received", ["method"], registry=r)
        self._responses = Counter("sip_responses", "SIP responses sent", ["method", "code"], registry=r)
        self._latency = Histogram(
            "sip_processing_seconds",
            "Time from a request's arrival to its final response and follow-up work",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self._dropped = Counter("sip_dropped", "Messages dropped or absorbed, by reason", ["reason"], registry=r)
        self._notify_sent = Counter("sip_notify_sent", "NOTIFYs sent (first transmissions)", ["event"], registry=r)
        self._notify_failed = Counter(
            "sip_notify_failed", "NOTIFYs with an error response or timeout", ["event", "code"], registry=r
        )
        self._publications = Counter(
            "presence_publication_changes", "Accepted PUBLISHes by kind", ["event", "kind"], registry=r
        )
        self._expired = Counter("presence_expired", "Records expired by this node", ["kind"], registry=r)
        self.subscriptions = Gauge("presence_subscriptions", "Live subscriptions", registry=r)
        self.presentities = Gauge("presence_presentities", "Presentities with live publications", registry=r)
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._cache.get(key)
        if c is None:
            c = self._cache[key] = metric.labels(*labels)
        return c

    def request(self, method: str) -> None:
        self._child(self._requests, method).inc()

    def response(self, method: str, code: int) -> None:
        self._child(self._responses, method, str(code)).inc()

    def latency(self, method: str, seconds: float) -> None:
        self._child(self._latency, method).observe(seconds)

    def dropped(self, why: str) -> None:
        self._child(self._dropped, why).inc()

    def notify_sent(self, event: str) -> None:
        self._child(self._notify_sent, event).inc()

    def notify_failed(self, event: str, code: int) -> None:
        self._child(self._notify_failed, event, str(code)).inc()

    def publication_change(self, event: str, kind: str) -> None:
        self._child(self._publications, event, kind).inc()

    def expired(self, kind: str, n: int) -> None:
        if n:
            self._child(self._expired, kind).inc(n)

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
