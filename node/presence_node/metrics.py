"""Prometheus metrics, one registry per node (several nodes may share a
process in tests).

The hot path only bumps plain dict counters; a custom collector turns them
into Prometheus families when ``/metrics`` is scraped.  prometheus-client's
own labelled counters take a lock and a label lookup per increment, which
cost more than parsing a SIP header at 4000 requests per second.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Iterator, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sip_requests": ("SIP requests received", ("method",)),
    "sip_responses": ("SIP responses sent", ("method", "code")),
    "sip_dropped": ("Messages dropped or absorbed, by reason", ("reason",)),
    "storage_refused_requests": (
        "Requests answered 503 because the storage could not serve them in time (unavailable)"
        " or their client had given up (expired)",
        ("reason",),
    ),
    "sip_notify_sent": ("NOTIFYs sent (first transmissions)", ("event",)),
    "sip_notify_failed": ("NOTIFYs answered with an error or timed out", ("event", "code")),
    "sip_notify_withheld": ("NOTIFY transmissions withheld from an address that has not answered one", ("reason",)),
    "sip_send_errors": ("Sends the operating system refused (address of another family)", ("transport",)),
    "sip_tcp_closed": ("TCP connections closed or refused by the node, by reason", ("reason",)),
    "sip_tls_reloads": ("Reloads of the SIP TLS certificate and key after their files changed, by result", ("result",)),
    "sip_flows_closed": (
        "Subscriptions ended because the TLS or WebSocket connection their NOTIFYs travel on closed"
        " (or, for a NOTIFY, is not held by this node)",
        ("transport",),
    ),
    "presence_publication_changes": ("Accepted PUBLISHes by kind", ("event", "kind")),
    "presence_expired": ("Records expired by this node", ("kind",)),
    "presence_publish_refused": ("PUBLISH bodies refused for a limits setting, by setting", ("event", "reason")),
    "presence_limit_refused": ("Requests refused by a limit on live state, by setting", ("limit",)),
    "cluster_messages_sent": ("Cluster channel messages sent, by kind", ("kind",)),
    "cluster_messages_received": ("Authentic cluster messages received, by kind", ("kind",)),
    "cluster_messages_rejected": ("Cluster messages refused and not applied, by reason", ("reason",)),
    "cluster_messages_lost": ("Cluster messages found missing by sequence number, by sender", ("peer",)),
    "cluster_messages_ignored": ("Cluster messages received but not acted upon, by reason", ("reason",)),
    "cluster_connections_refused": ("Inbound cluster connections closed at accept, by cap", ("reason",)),
    "cluster_connections_closed": ("Inbound cluster connections closed by this node, by reason", ("reason",)),
    "presence_notify_queue_taken": (
        "NOTIFYs this node sent for a change or request another node saw (taken from the shared queue), by kind",
        ("kind",),
    ),
    "feature_webhook_calls": ("Feature key changes posted to features.webhook_url, by result", ("result",)),
    "sip_auth_results": (
        "Authentication outcomes of PUBLISH, SUBSCRIBE and REGISTER (challenged, ok, trusted, failed, stale,"
        " replayed, forbidden, rate-limited, malformed)",
        ("result",),
    ),
    "federation_queries": ("Presentity queries this node started", ("event",)),
    "federation_resyncs": ("Resyncs this node asked a peer for, by cause", ("cause",)),
}


class _Histogram:
    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0


def _buckets(h: _Histogram) -> list[tuple[str, int]]:
    cumulative = 0
    buckets = []
    for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), h.counts):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets


class Counting(Protocol):
    """What the transport, the cluster channel and the NOTIFY owners report
    through: one of the counters above by name and label
    (:meth:`Metrics.count`); tests may pass anything with this method."""

    def count(self, name: str, label: str, n: int = 1) -> None: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._values: dict[str, defaultdict[tuple[str, ...], float]] = {
            name: defaultdict(float) for name in _COUNTERS
        }
        self._latency: dict[str, _Histogram] = {}
        self._queue_delay = _Histogram()
        #: Whether overload control sheds requests now, set before a scrape.
        self.shedding = False
        #: Gauges set just before a scrape.
        self.subscriptions = 0
        self.presentities = 0
        self.peers_up = 0
        #: Transport gauges, set before a scrape.
        self.tcp_connections = 0
        self.tcp_queued_bytes = 0
        #: Open stream connections by transport (tcp, tls, ws, wss).
        self.connections: dict[str, int] = {}
        self.notify_targets: dict[str, int] = {}
        #: Live records per kind (Storage.usage), set before a scrape.
        self.live: dict[str, int] = {}
        #: The server transaction table (entries, bytes held, evictions), set before a scrape.
        self.transactions = (0, 0, 0)
        #: Inbound cluster channel connections by state, set before a scrape.
        self.cluster_connections: dict[str, int] = {}
        #: Shared database: whether the LISTEN connection that wakes this
        #: node for its NOTIFYs is open (None: no shared database).
        self.listener_up: int | None = None
        #: Nonces whose count the authenticator tracks (None: auth off), set before a scrape.
        self.auth_nonces: int | None = None
        #: Group commit of the storage (Storage.batch_counts), set before a scrape.
        self.batches: dict[str, tuple[int, int, int, int]] = {}
        self.registry.register(self)  # type: ignore[arg-type]
        v = self._values
        self._requests = v["sip_requests"]
        self._responses = v["sip_responses"]
        self._dropped = v["sip_dropped"]
        self._sent = v["sip_notify_sent"]
        self._failed = v["sip_notify_failed"]
        self._publications = v["presence_publication_changes"]
        self._expired = v["presence_expired"]
        self._refused = v["presence_limit_refused"]

    # -- hot path ---------------------------------------------------------------

    def request(self, method: str) -> None:
        self._requests[(method,)] += 1

    def response(self, method: str, code: int) -> None:
        self._responses[(method, str(code))] += 1

    def latency(self, method: str, seconds: float) -> None:
        h = self._latency.get(method)
        if h is None:
            h = self._latency[method] = _Histogram()
        h.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds
        h.n += 1

    def queue_delay(self, seconds: float) -> None:
        h = self._queue_delay
        h.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.total += seconds
        h.n += 1

    def dropped(self, why: str) -> None:
        self._dropped[(why,)] += 1

    def storage_refused(self, why: str) -> None:
        self._values["storage_refused_requests"][(why,)] += 1

    def notify_sent(self, event: str) -> None:
        self._sent[(event,)] += 1

    def notify_failed(self, event: str, code: int) -> None:
        self._failed[(event, str(code))] += 1

    def publication_change(self, event: str, kind: str) -> None:
        self._publications[(event, kind)] += 1

    def publish_refused(self, event: str, limit: str) -> None:
        self._values["presence_publish_refused"][(event, limit)] += 1

    def expired(self, kind: str, n: int) -> None:
        if n:
            self._expired[(kind,)] += n

    def refused(self, limit: str) -> None:
        self._refused[(limit,)] += 1

    def count(self, name: str, label: str, n: int = 1) -> None:
        """The cluster counters above (off the SIP hot path)."""
        self._values[name][(label,)] += n

    # -- scrape -------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        for name, (doc, labels) in _COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=list(labels))
            for key, value in sorted(self._values[name].items()):
                family.add_metric(list(key), value)
            yield family
        hist = HistogramMetricFamily(
            "sip_processing_seconds",
            "Time from a request's arrival to its final response and follow-up work",
            labels=["method"],
        )
        for method, h in sorted(self._latency.items()):
            hist.add_metric([method], _buckets(h), h.total)
        yield hist
        delay = HistogramMetricFamily(
            "sip_queue_delay_seconds",
            "Queueing delay of each request as overload control sees it: time in the receive buffer"
            " plus the time requests spend inside the node",
        )
        delay.add_metric([], _buckets(self._queue_delay), self._queue_delay.total)
        yield delay
        yield GaugeMetricFamily(
            "sip_overload_shedding", "1 while requests delayed beyond the target are shed", value=int(self.shedding)
        )
        yield GaugeMetricFamily("presence_subscriptions", "Live subscriptions", value=self.subscriptions)
        yield GaugeMetricFamily(
            "presence_presentities", "Presentities with live publications", value=self.presentities
        )
        yield GaugeMetricFamily("sip_tcp_connections", "Open TCP connections", value=self.tcp_connections)
        yield GaugeMetricFamily(
            "sip_tcp_queued_bytes", "Bytes queued for TCP peers that have not read them", value=self.tcp_queued_bytes
        )
        conns_by = GaugeMetricFamily(
            "sip_connections", "Open stream connections by transport (all in sip_tcp_connections)", labels=["transport"]
        )
        for kind, n in sorted(self.connections.items()):
            conns_by.add_metric([kind], n)
        yield conns_by
        targets = GaugeMetricFamily(
            "sip_notify_targets", "UDP NOTIFY destinations known: proven (answered) or being probed", labels=["state"]
        )
        for state, n in sorted(self.notify_targets.items()):
            targets.add_metric([state], n)
        yield targets
        live = GaugeMetricFamily(
            "presence_live_records",
            "Live records held, by kind (a shared database: all nodes', at the last recount plus this node's since)",
            labels=["kind"],
        )
        for kind, n in self.live.items():
            live.add_metric([kind], n)
        yield live
        yield GaugeMetricFamily("cluster_peers_up", "Federation peers heard from recently", value=self.peers_up)
        entries, held, evicted = self.transactions
        yield GaugeMetricFamily("sip_transactions", "Server transactions held (in progress or in Timer J)", value=entries)
        yield GaugeMetricFamily(
            "sip_transactions_retained_bytes", "Bytes the completed server transactions hold", value=held
        )
        yield CounterMetricFamily(
            "sip_transactions_evicted", "Completed server transactions forgotten early for the byte budget",
            value=evicted,
        )
        conns = GaugeMetricFamily("cluster_connections", "Inbound cluster channel connections", labels=["state"])
        for state, n in sorted(self.cluster_connections.items()):
            conns.add_metric([state], n)
        yield conns
        if self.listener_up is not None:
            yield GaugeMetricFamily(
                "presence_notify_listener_up",
                "Whether the connection that wakes this node for the NOTIFYs it owns is open (else it polls)",
                value=self.listener_up,
            )
        if self.auth_nonces is not None:
            yield GaugeMetricFamily(
                "sip_auth_tracked_nonces", "Nonces whose nonce count is tracked (auth.max_tracked_nonces)",
                value=self.auth_nonces,
            )
        for i, (name, doc) in enumerate((
            ("storage_batches", "Database statements that carried several requests, by request kind"),
            ("storage_batched_requests", "Requests carried by those statements, by request kind"),
            ("storage_batch_retries", "Batch statements refused as a whole and run again one by one"),
            ("storage_batch_overdue", "Statements started for requests queued longer than the batch wait"),
        )):
            family = CounterMetricFamily(name, doc, labels=["kind"])
            for kind, values in sorted(self.batches.items()):
                family.add_metric([kind], values[i])
            yield family

    def render(self) -> bytes:
        return generate_latest(self.registry)
