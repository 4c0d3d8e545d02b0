"""The node: builds the parts from a :class:`Config`, starts and stops them.

Start order: storage, sharing tags, a first count of the live records (the
limits read it), (shared database) the connection that listens for the
NOTIFYs of its tags, SIP sockets (UDP and TCP on one port; TLS, WS and
WSS listeners when configured), the cluster
channel (federation), the expiry timer (and, with a shared database, the
periodic recount), then the admin API, and only then ready.  Stop order
(SIGTERM): not ready, on a shared database no longer listening for the
NOTIFYs of its tags (other nodes send them from then on) after taking what
was queued for it, new SIP requests answered 503 (the sockets stay open,
since the responses to NOTIFYs in flight arrive on them), handlers in
flight finish, subscriptions that die with the node are ended with
``deactivated`` (S30), NOTIFYs in flight finish (all bounded by
``drain_timeout``), then admin, sockets and storage.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import Callable

from aiohttp import web

from .admin.app import make_app
from .admin.secret import cluster_secret, load_secret
from .config import Config, split_hostport
from .metrics import Metrics
from .packages.registry import PackageOptions, PackageRegistry
from .xmlsafe import XmlLimits
from .service.context import Service
from .service.auth import Authenticator, file_lookup, load_users, nonce_secret
from .service.dispatch import Dispatcher
from .service.expiry import Expirer
from .service.features import FeatureHook
from .service.lists import ResourceLists
from .service.ids import Ids
from .service.notify import Notifier
from .net.targets import Targets
from .service.owners import Owners
from .net.tls import ServerCertificate
from .net.transport import Transports
from .net.websocket import WebSocketListener
from .service.tags import SharingTags
from .federation import Federation
from .storage import MemoryStorage, Storage

log = logging.getLogger(__name__)


class Node:
    def __init__(
        self,
        config: Config,
        *,
        secret: str | None = None,
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        #: The one wall clock (epoch seconds) every part reads for expiry,
        #: rate limits, NOTIFY throttling and retained transactions, so a
        #: test can move time instead of sleeping it out.  Timers that run on
        #: the event loop's clock (retransmissions, Timer F) are not its.
        self.clock = clock
        self.metrics = Metrics()
        self.storage: Storage = storage or make_storage(config)
        self.packages = PackageRegistry(
            list(config.packages),
            PackageOptions(
                XmlLimits(
                    max_namespaces=config.limits.max_xml_namespaces,
                    max_namespace_length=config.limits.max_xml_namespace_length,
                    max_elements=config.limits.max_xml_elements,
                ),
                idle_dialog_placeholder=config.dialog.idle_placeholder,
            ),
        )
        self.ids = Ids(config.node_id)
        host, _ = config.sip_address
        self.transports = Transports(
            self._receive,
            advertised_host=config.advertised_host or host,
            t1=config.notify.t1,
            t2=config.notify.t2,
            udp_max_size=config.notify.udp_max_size,
            max_size=config.limits.max_message_size,
            max_tcp=config.limits.max_tcp_connections,
            tcp_idle=config.limits.tcp_idle_timeout,
            max_tcp_per_source=config.limits.max_tcp_per_source,
            message_timeout=config.limits.tcp_message_timeout,
            max_queued=config.limits.tcp_max_queued,
            write_timeout=config.limits.tcp_write_timeout,
            max_queued_total=config.limits.tcp_max_queued_total,
            targets=Targets(
                config.notify.unproven_budget, config.notify.max_proven_targets, config.notify.max_unproven_targets
            ),
            metrics=self.metrics,
            on_flow_closed=self._flow_closed,
        )
        tcfg = config.transports
        self.certificate: ServerCertificate | None = None
        if tcfg.tls_cert_file is not None and tcfg.tls_key_file is not None:
            self.certificate = ServerCertificate(tcfg.tls_cert_file, tcfg.tls_key_file, self.metrics)
        self._websockets: list[WebSocketListener] = []
        self.notifier = Notifier(
            self.storage,
            self.packages,
            self.transports,
            self.ids,
            self.metrics,
            min_interval=config.notify.min_interval,
            clock=clock,
        )
        self.notifier.lists = ResourceLists(
            config.limits.max_resource_lists, config.limits.max_list_members, config.resource_lists
        )
        self.service = Service(config, self.storage, self.packages, self.notifier, self.ids, self.metrics)
        if config.features.webhook_url is not None:
            self.service.feature_hook = FeatureHook(config.features, self.metrics)
        self.auth: Authenticator | None = None
        if config.auth.enabled:
            # The users file if given, else the shared database's table.
            users = config.auth.users_file
            lookup = (
                file_lookup(load_users(users) if users is not None else {})
                if users is not None or not self.storage.shared
                else self.storage.subscriber  # type: ignore[attr-defined]
            )
            self.auth = Authenticator(
                config.auth,
                lookup,
                nonce_secret(config.auth.nonce_secret_file, self.storage.shared or config.federation.enabled),
                self.metrics,
                self.storage.watcher_rule,
            )
        self.dispatcher = Dispatcher(
            self.service, self.metrics, self.transports.on_response, local_hosts=_local_hosts(config), clock=clock,
            auth=self.auth,
        )
        self.expirer = Expirer(self.storage, self.notifier, config.node_id, self.metrics.expired, clock)
        self.tags = SharingTags(config, self.storage, clock)
        self.owners: Owners | None = None
        if self.storage.shared:
            self.owners = Owners(config.node_id, self.storage, self.notifier, self.metrics, clock)
            self.notifier.owners = self.service.owners = self.owners
        self.federation: Federation | None = None
        if config.federation.enabled:
            self.federation = Federation(
                config,
                self.storage,
                self.notifier,
                self.metrics,
                cluster_secret(config.federation.secret_file).encode(),
                clock,
            )
            self.service.federation = self.federation
            self.expirer.listener = self.federation
            self.notifier.listener = self.federation
        self.tags.on_change = self._tags_changed
        self._secret = secret
        self._runner: web.AppRunner | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._recount_task: asyncio.Task[None] | None = None
        self.ready = False
        self.sip_port = 0
        self.admin_port = 0

    def _tags_changed(self) -> None:
        """This node activated or gave up a tag."""
        if self.federation is not None:
            self.federation.tags_changed()
        if self.owners is not None:
            self.owners.wake(tags=True)  # a tag taken over: what waited for its owner

    def _flow_closed(self, subs: list) -> None:  # type: ignore[type-arg]
        self.notifier.flow_closed(subs)

    def _receive(self, data: bytes, host: str, port: int, transport: str, send, arrived: float | None) -> None:  # type: ignore[no-untyped-def]
        try:
            self.dispatcher.receive(data, host, port, transport, send, arrived)
        except Exception:  # never let one message take the listener down
            log.exception("unexpected error handling a message", extra={"source": f"{host}:{port}"})

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        await self.storage.start()
        await self.tags.start()
        await self._recount()
        if self.owners is not None:
            from .storage.changes import ChangeFeed  # psycopg only when used

            await self.owners.start(ChangeFeed(self.storage, cfg.node_id, self.owners.wake))  # type: ignore[arg-type]
        host, port = cfg.sip_address
        self.sip_port = await self.transports.start(host, port)
        self.service.sip_port = self.sip_port
        await self._listen()
        self.service.contact = {t: self.transports.contact(t) for t in self.transports.ports}
        if self.federation is not None:
            await self.federation.start()
        self._expiry_task = asyncio.ensure_future(self._expiry_loop())
        if self.storage.shared:
            self._recount_task = asyncio.ensure_future(self._recount_loop())
        secret = self._secret or load_secret(cfg.admin_secret_file, cfg.state_dir)
        self._runner = web.AppRunner(make_app(self, secret), access_log=None, handle_signals=False)
        await self._runner.setup()
        ahost, aport = cfg.admin_address
        site = web.TCPSite(self._runner, ahost, aport)
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready = True
        if self.auth is None:
            log.warning(
                "SIP authentication is off (auth.mode): anyone who reaches the SIP port may publish any"
                " presentity's state and watch anyone; see README 'Secure deployment'",
                extra={"node": cfg.node_id},
            )
        log.info(
            "node started",
            extra={
                "node": cfg.node_id, "sip": f"{host}:{self.sip_port}", "admin": f"{ahost}:{self.admin_port}",
                **{k: port for k, port in self.transports.ports.items() if k not in ("udp", "tcp")},
            },
        )

    async def _listen(self) -> None:
        """The TLS, WS and WSS listeners that are configured."""
        tcfg = self.config.transports
        tls = self.certificate.context if self.certificate is not None else None
        if tcfg.tls is not None:
            await self.transports.listen("tls", *split_hostport(tcfg.tls), tls=tls)
        for kind, address in (("ws", tcfg.ws), ("wss", tcfg.wss)):
            if address is not None:
                listener = WebSocketListener(self.transports, kind, tcfg.ws_path)
                self._websockets.append(listener)
                await listener.start(*split_hostport(address), tls if kind == "wss" else None)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_interval)
            # Timer J also runs when no request arrives to sweep it.
            self.dispatcher.txns.sweep(self.clock())
            if self.owners is not None:
                self.owners.poll()
            try:
                await self.expirer.sweep()
            except Exception:
                log.exception("expiry sweep failed")

    async def _recount(self) -> None:
        """Refresh the live counts the limits read (a shared database; the
        memory backend's are exact).  Sources under half their share are
        left out: only those near it can be refused before the next one."""
        await self.storage.refresh_usage(self.config.limits.max_records_per_source // 2)

    async def _recount_loop(self) -> None:
        """Its own task: a recount of a large database takes a good part of
        a second, which must not delay the expiry sweeps."""
        while True:
            await asyncio.sleep(self.config.limits.count_refresh_interval)
            try:
                await self._recount()
            except Exception:
                log.exception("recount of live records failed")

    async def _deactivate(self) -> None:
        """S30, S80: this node's subscriptions die with it (memory storage),
        so end each with ``terminated;reason=deactivated``: the subscriber
        re-subscribes at once (through its proxy or load balancer, to a live
        node) instead of staying silent until its Expires.  With a shared
        database the other nodes serve them on, and nothing is sent."""
        now = self.clock()
        count, _ = await self.storage.counts()
        subs = await self.storage.list_subscriptions(
            now, presentity=None, watcher=None, event=None, offset=0, limit=max(count, 1)
        )
        for sub in subs:
            removed = await self.storage.delete_subscription(sub.id)
            if removed is not None:
                await self.notifier.terminated(removed, "deactivated")
        if subs:
            log.info("subscriptions deactivated", extra={"node": self.config.node_id, "count": len(subs)})

    async def metrics_text(self) -> bytes:
        subs, pres = await self.storage.counts()
        usage = self.storage.usage()
        self.metrics.live = {
            "presentities": usage.presentities,
            "publications": usage.publications,
            "subscriptions": usage.subscriptions,
            "registrations": usage.registrations,
        }
        self.metrics.subscriptions = subs
        self.metrics.presentities = pres
        self.metrics.batches = self.storage.batch_counts()
        txns = self.dispatcher.txns
        self.metrics.transactions = (len(txns), txns.retained, txns.evicted)
        self.metrics.shedding = self.dispatcher.overload.shedding
        if self.auth is not None:
            self.metrics.auth_nonces = len(self.auth.counts)
        if self.federation is not None:
            self.metrics.peers_up = self.federation.peers_up
            self.metrics.cluster_connections = self.federation.channel.connections()
        t = self.transports
        self.metrics.tcp_connections = len(t.connections)
        self.metrics.tcp_queued_bytes = t.queued_total
        by_kind: dict[str, int] = dict.fromkeys((k for k in t.ports if k != "udp"), 0)
        for conn in t.connections.values():
            by_kind[conn.kind] = by_kind.get(conn.kind, 0) + 1
        self.metrics.connections = by_kind
        self.metrics.notify_targets = {"proven": t.targets.proven, "unproven": t.targets.unproven}
        if self.owners is not None:
            self.metrics.listener_up = int(self.owners.listening)
        return self.metrics.render()

    async def stop(self) -> None:
        self.ready = False
        self.dispatcher.draining = True
        log.info("node draining", extra={"node": self.config.node_id})
        for task in (self._expiry_task, self._recount_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        deadline = self.config.drain_timeout
        t0 = time.monotonic()
        if self.owners is not None:
            await self.owners.close(deadline)
        await self.dispatcher.drain(max(0.0, deadline - (time.monotonic() - t0)))
        if not self.storage.shared and self.sip_port:
            await self._deactivate()
        await self.notifier.drain(max(0.0, deadline - (time.monotonic() - t0)))
        if self._runner is not None:
            await self._runner.cleanup()
        if self.federation is not None:
            await self.federation.close()
        if self.service.feature_hook is not None:
            await self.service.feature_hook.close()
        await self.transports.close()
        for listener in self._websockets:
            await listener.close()
        await self.storage.close()
        log.info("node stopped", extra={"node": self.config.node_id})


DSN_ENV = "PRESENCE_DB_DSN"


def tune_gc() -> None:
    """Keep the cyclic garbage collector out of the latency tail.

    The node's records hold no reference cycles, but with 100k of them
    alive every full collection walks them all: at 3200 PUBLISH/s that put
    the p99 at 45-100 ms against 5 ms without it (bench/compare.sh).  So the
    objects of start-up are frozen (never scanned again) and collections are
    made rarer: the young generation is collected every 20000 net
    allocations instead of 700, and full collections come far less often.
    Cycles are still collected.  Process-wide, so the CLI calls it once,
    not each Node (tests run several nodes in one process).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


class StorageConfigError(Exception):
    """The configured storage cannot be built (no DSN, unreadable file)."""


def make_storage(config: Config) -> Storage:
    """The configured backend.  The DSN comes from a file or the
    environment, never from the configuration itself (it may hold a
    password)."""
    cfg = config.storage
    if cfg.backend == "memory":
        return MemoryStorage()
    from .storage.postgres import PostgresStorage  # psycopg only when used

    if cfg.dsn_file is not None:
        try:
            dsn = cfg.dsn_file.read_text().strip()
        except OSError as e:
            raise StorageConfigError(f"cannot read storage.dsn_file {cfg.dsn_file}: {e.strerror}") from e
    else:
        dsn = os.environ.get(DSN_ENV, "").strip()
    if not dsn:
        raise StorageConfigError(f"storage.backend is postgres but neither storage.dsn_file nor {DSN_ENV} gives a DSN")
    return PostgresStorage(
        dsn, min_size=cfg.pool_min, max_size=cfg.pool_max, open_timeout=cfg.connect_timeout,
        acquire_timeout=cfg.acquire_timeout, reconnect_timeout=cfg.reconnect_timeout,
    )


def _local_hosts(config: Config) -> set[str]:
    host, _ = config.sip_address
    hosts = {host.lower(), "localhost", "127.0.0.1"}
    if config.advertised_host:
        hosts.add(config.advertised_host.lower())
    hosts.update(config.domains)
    return hosts
