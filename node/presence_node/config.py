"""Every node setting in one validated model, loadable from YAML.

Unknown keys are errors (a typo must not silently fall back to a default),
and a bad file is reported with the dotted path of the offending key.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .admin.contract import ADMIN_PORT

KNOWN_PACKAGES = ("presence", "presence.winfo", "dialog", "dialog;sla", "message-summary", "as-feature-event")

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_HOSTPORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key."""


def split_hostport(value: str) -> tuple[str, int]:
    m = _HOSTPORT.match(value)
    if m is None:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(m.group("port"))
    if port > 65535:
        raise ValueError(f"port out of range in {value!r}")
    return m.group("host").strip("[]"), port


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expiry(_Strict):
    """Expiry bounds (D10) for subscriptions or publications, in seconds."""

    min: int = Field(60, ge=0)
    default: int = Field(3600, ge=1)
    max: int = Field(3600, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Expiry":
        if not self.min <= self.default <= self.max:
            raise ValueError("need min <= default <= max")
        return self


class Notify(_Strict):
    """NOTIFY sending (D7, S08, S26)."""

    #: Minimum seconds between two NOTIFYs of one subscription (D7).
    min_interval: float = Field(0.0, ge=0)
    #: A UDP NOTIFY larger than this goes over TCP when possible (S08).
    udp_max_size: int = Field(1300, ge=512, le=65000)
    #: RFC 3261 T1 and T2 in seconds (Timer F is 64*T1).
    t1: float = Field(0.5, gt=0, le=10)
    t2: float = Field(4.0, gt=0, le=60)
    #: Anti-reflection (#12.10): bytes (retransmissions included) sent over
    #: UDP to an address that has never answered a NOTIFY, per probe.  The
    #: first transmission always goes; later NOTIFYs to that address wait
    #: until it answers (then it is proven and unlimited).
    unproven_budget: int = Field(4096, ge=0)
    #: Addresses remembered as proven, and addresses being probed.
    max_proven_targets: int = Field(65536, ge=1)
    max_unproven_targets: int = Field(65536, ge=1)


class Dialog(_Strict):
    """How dialog documents (BLF, shared lines) are written for phones."""

    #: One terminated placeholder ``<dialog>`` in an idle document, for the
    #: phones that show nothing without one (Kamailio's ``force_dummy_dialog``).
    idle_placeholder: bool = False


class Features(_Strict):
    """Feature key synchronisation (``as-feature-event``): who hears of a change."""

    #: POSTed a JSON object for each DND or forwarding change a phone makes
    #: (README "as-feature-event"); none: the change is only stored and notified.
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    #: A file holding the bearer secret sent with each call.
    webhook_secret_file: Path | None = None
    webhook_timeout: float = Field(2.0, gt=0, le=60)
    #: Calls in flight at most; a change beyond it is not posted (counted).
    webhook_max_in_flight: int = Field(100, ge=1, le=10000)


class Limits(_Strict):
    """Protection against floods and oversized input."""

    max_message_size: int = Field(65535, ge=1024, le=1_048_576)
    max_body_size: int = Field(60000, ge=256, le=1_048_576)
    #: What one published XML body may hold (400 beyond): distinct
    #: namespace bindings, characters of a namespace name, elements.  Real
    #: PIDF and dialog-info bodies hold a handful of bindings with names
    #: under 64 characters and tens of elements; a binding that two bodies
    #: of one presentity make differently is repeated on every element
    #: using it, so its length bounds how much composition can add.
    max_xml_namespaces: int = Field(128, ge=1, le=100_000)
    max_xml_namespace_length: int = Field(256, ge=16, le=65535)
    max_xml_elements: int = Field(4096, ge=1, le=1_000_000)
    #: A request whose header section is longer, or that carries more Via
    #: values, gets 513 (70: the Max-Forwards a UAC starts with, so an
    #: honest request never went through more proxies).
    max_header_bytes: int = Field(16384, ge=1024, le=1_048_576)
    max_vias: int = Field(70, ge=1, le=1000)
    #: Bytes the server transactions may hold for Timer J (64*T1 over UDP)
    #: to answer retransmissions; beyond it the oldest are forgotten first.
    #: An entry counts 550-900 bytes: the default holds Timer J's 32 s of
    #: about 1500 requests/s.
    retained_response_bytes: int = Field(32 * 1024 * 1024, ge=65536)
    #: Messages per second one source IP may send (token bucket), 0 = no
    #: limit.  Beyond it, datagrams are dropped unread.  The default sits
    #: above what one SIPp load generator sends in the benchmarks.
    per_source_rate: float = Field(20000.0, ge=0)
    per_source_burst: int = Field(5000, ge=1)
    #: Requests in progress beyond which new ones get 503 Retry-After.
    max_in_progress: int = Field(20000, ge=1)
    #: Overload control (CoDel-like): a request's queueing delay is the
    #: time since the kernel received it plus, on PostgreSQL, the database
    #: backlog.  Once every delay stays above the target for a whole
    #: interval (service/overload.py), new requests that waited longer than the
    #: target get a 503 Retry-After from a header scan (no parse, no
    #: handler), until a whole interval passes without such a delay.
    overload_target: float = Field(0.02, ge=0.001, le=10)
    overload_interval: float = Field(0.1, ge=0.001, le=10)
    #: Seconds a client is told to wait after that 503.
    overload_retry_after: int = Field(5, ge=1, le=3600)
    #: TCP connections idle longer than this are closed.
    tcp_idle_timeout: float = Field(300.0, gt=0)
    max_tcp_connections: int = Field(4096, ge=1)
    #: Connections one source IP may hold (#12.12).
    max_tcp_per_source: int = Field(256, ge=1)
    #: Seconds one message may take to arrive once its first byte came
    #: (#12.12: a trickled message keeps no connection open for hours).
    tcp_message_timeout: float = Field(10.0, gt=0)
    #: Bytes queued for a peer that does not read (#12.5): a connection
    #: that keeps more than ``tcp_max_queued`` unread for
    #: ``tcp_write_timeout`` seconds (a fan-out burst to a proxy drains
    #: sooner), or that holds most when all hold ``tcp_max_queued_total``,
    #: is closed and its NOTIFYs fail as on Timer F.
    tcp_max_queued: int = Field(1_048_576, ge=65536)
    tcp_write_timeout: float = Field(10.0, gt=0)
    tcp_max_queued_total: int = Field(134_217_728, ge=65536)
    #: Live state held at most (#12): beyond, a request that would add a
    #: record is refused, before anything is stored, with 503 and
    #: Retry-After (node-wide) or 403 (one source's or one presentity's
    #: share).  Refreshes and removals of held records always go on.  With
    #: a shared database the node-wide caps bound the whole database.
    max_presentities: int = Field(1_000_000, ge=1)
    max_publications: int = Field(1_000_000, ge=1)
    max_subscriptions: int = Field(1_000_000, ge=1)
    max_registrations: int = Field(1_000_000, ge=1)
    #: Live publications of one presentity and package (403 beyond).
    max_publications_per_presentity: int = Field(100, ge=1)
    #: Live publications, subscriptions and bindings created from one
    #: source IP, all kinds together (403 beyond).
    max_records_per_source: int = Field(500_000, ge=1)
    #: Shared database: seconds between recounts of the live records (one
    #: statement over every table, 0.3-0.8 s of database time at 100k rows
    #: per table).
    count_refresh_interval: float = Field(30.0, gt=0, le=3600)
    #: Resource lists the node holds (RFC 4662) and members per list: a
    #: list NOTIFY composes every member, so its size bounds the work of one.
    max_resource_lists: int = Field(10_000, ge=1)
    max_list_members: int = Field(500, ge=1, le=10_000)


class Storage(_Strict):
    """Where state lives: ``memory`` (one node) or ``postgres`` (shared by
    the nodes of a cluster, the seed's fallback2db)."""

    backend: Literal["memory", "postgres"] = "memory"
    #: File holding the PostgreSQL DSN (it may carry a password, so it is
    #: never a plain setting); else the PRESENCE_DB_DSN environment variable.
    dsn_file: Path | None = None
    #: Seconds start-up waits for the database before giving up.
    connect_timeout: float = Field(10.0, gt=0, le=300)
    pool_min: int = Field(2, ge=1, le=100)
    pool_max: int = Field(8, ge=1, le=200)
    #: Seconds a request waits for a database connection before it is
    #: answered 503 with Retry-After: well inside the client's transaction
    #: timeout (64*T1, 32 s), so no request is held through an outage.
    acquire_timeout: float = Field(1.5, gt=0, le=30)
    #: Seconds after which a lost connection is tried again (psycopg_pool's
    #: reconnect_timeout; its own back-off would wait up to minutes).
    reconnect_timeout: float = Field(0.5, gt=0, le=60)

    @model_validator(mode="after")
    def _pool(self) -> "Storage":
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min must not exceed pool_max")
        return self


class Peer(_Strict):
    """Another node of the federated cluster."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,31}$")
    #: HOST:PORT of its cluster channel.
    address: str
    #: Its location (nodes of one location share a database and a tag);
    #: default: its id (a location of one node).
    location: str | None = None

    @field_validator("address")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v


class Federation(_Strict):
    """Federation (the seed's third and fourth scenarios): nodes without a
    common database exchange presentities over an authenticated channel."""

    mode: Literal["disabled", "on-demand-sharing", "full-sharing"] = "disabled"
    #: HOST:PORT this node's cluster channel listens on.
    listen: str = "127.0.0.1:7060"
    #: This node's location; default: its node id.
    location: str | None = None
    peers: tuple[Peer, ...] = ()
    #: File holding the cluster secret (HMAC key); else the
    #: PRESENCE_CLUSTER_SECRET environment variable.  Never a plain setting.
    secret_file: Path | None = None
    #: Seconds the first NOTIFY of a new subscriber waits for a query answer.
    query_wait: float = Field(0.2, ge=0, le=5)
    #: Seconds after which an unanswered query may be sent again.
    query_ttl: float = Field(5.0, gt=0, le=3600)
    #: Seconds between full resyncs with every peer (interest, tags, state).
    #: A safety net only: lost messages are found within a heartbeat by
    #: their sequence numbers, and each resync costs a message listing every
    #: watched presentity, so it is not frequent by default.
    resync_interval: float = Field(300.0, gt=0, le=86400)
    #: Seconds between heartbeats; a peer silent for ``peer_timeout`` is down.
    heartbeat: float = Field(1.0, gt=0, le=60)
    peer_timeout: float = Field(3.0, gt=0, le=600)
    #: Seconds a message's timestamp may differ from our clock (replay window).
    max_skew: float = Field(30.0, gt=0, le=3600)
    # Inbound connections before authentication (#12.9): a peer proves it
    # holds the secret in its first message (the hello), so until then a
    # connection holds little and not for long.
    #: Seconds from TCP accept (TLS handshake included) to the hello.
    auth_timeout: float = Field(5.0, gt=0, le=300)
    #: Unauthenticated inbound connections in all, and from one address.
    max_unauthenticated: int = Field(64, ge=1, le=100_000)
    max_unauthenticated_per_source: int = Field(8, ge=1, le=100_000)
    #: Largest WebSocket message, in bytes, also before authentication;
    #: larger cluster messages travel in chunks of this size.
    max_frame: int = Field(16384, ge=1024, le=16 * 1024 * 1024)
    #: Largest cluster message once reassembled (authenticated peers only).
    #: The largest are a resync's, listing every watched presentity (about
    #: 40 bytes each): 64 MiB is some 1.5 million presentities.
    max_message: int = Field(64 * 1024 * 1024, ge=65536, le=1024 * 1024 * 1024)
    #: TLS for the channel (all three or none): this node's certificate
    #: chain and key (PEM), and the CA that peers' certificates must chain
    #: to, both ways (mutual TLS).  Re-read when the files change.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v

    @model_validator(mode="after")
    def _peers(self) -> "Federation":
        ids = [p.id for p in self.peers]
        if len(ids) != len(set(ids)):
            raise ValueError("peer ids must be unique")
        if self.max_unauthenticated_per_source > self.max_unauthenticated:
            raise ValueError("max_unauthenticated_per_source must not exceed max_unauthenticated")
        if self.max_frame > self.max_message:
            raise ValueError("max_frame must not exceed max_message")
        if len({self.tls_cert_file is None, self.tls_key_file is None, self.tls_ca_file is None}) > 1:
            raise ValueError("tls_cert_file, tls_key_file and tls_ca_file go together")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"


class Transports(_Strict):
    """SIP listeners besides UDP and TCP on ``sip`` (#15.5, #15.6), each
    HOST:PORT or absent: SIP over TLS (sips:), and RFC 7118 WebSocket, plain
    (``ws``) and over TLS (``wss``), served on ``ws_path``.  TLS and WSS
    use one certificate chain and key (PEM files, re-read when they change:
    a cert-manager Secret renewed in place).  Their connections count
    against the ``limits.*tcp*`` bounds together with TCP's."""

    tls: str | None = None
    ws: str | None = None
    wss: str | None = None
    ws_path: str = Field("/", pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/\-]*$")
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @field_validator("tls", "ws", "wss")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is not None:
            split_hostport(v)
        return v

    @model_validator(mode="after")
    def _certificate(self) -> "Transports":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if (self.tls is not None or self.wss is not None) and self.tls_cert_file is None:
            raise ValueError("tls and wss need tls_cert_file and tls_key_file")
        return self


class Auth(_Strict):
    """Digest authentication of PUBLISH, SUBSCRIBE and REGISTER (#15).

    ``digest`` answers 401 with WWW-Authenticate, ``proxy`` 407 with
    Proxy-Authenticate (the node seen as a proxy), ``off`` trusts every
    request (a first try on one node; the start-up log warns)."""

    mode: Literal["off", "digest", "proxy"] = "off"
    #: Realm challenged for requests to a domain; default: the domain
    #: itself (the From's host), so each domain is its own realm.
    realms: dict[str, str] = Field(default_factory=dict)
    #: Memory storage: the users, one ``AOR REALM HA1-MD5 HA1-SHA256`` per
    #: line (``presence-node users hash`` prints them; never passwords).
    users_file: Path | None = None
    #: File holding the secret nonces are signed with (every node of a
    #: cluster the same); else PRESENCE_AUTH_SECRET; else a random one per
    #: process (one node only: another node would find its nonces stale).
    nonce_secret_file: Path | None = None
    #: Digest algorithms challenged with, in order (RFC 8760: a client
    #: answers the first it supports); credentials of another are refused.
    #: Clients that take the first challenge whatever it is (SIPp, some
    #: old phones) need MD5 first or alone.
    algorithms: tuple[Literal["SHA-256", "MD5"], ...] = Field(("SHA-256", "MD5"), min_length=1)
    #: Seconds a nonce is accepted; later its user is challenged again
    #: with stale=true.
    nonce_lifetime: float = Field(300.0, ge=5, le=86400)
    #: Nonces whose nonce count is remembered (only nonces of requests that
    #: authenticated: an unauthenticated packet adds nothing).  Beyond it
    #: the oldest is forgotten, and with it every nonce issued before it.
    max_tracked_nonces: int = Field(100_000, ge=16)
    #: Failed authentications one source IP may make per second (token
    #: bucket ``failure_burst`` deep); beyond, its requests get 403 until
    #: the bucket refills.
    failure_rate: float = Field(5.0, gt=0)
    failure_burst: int = Field(20, ge=1)
    #: Who an authenticated watcher may SUBSCRIBE to (403 otherwise):
    #: ``everyone`` (D4), presentities of its own ``domain``, or only
    #: presentities that are users (``subscribers``).  presence.winfo stays
    #: the presentity's own whatever this says.
    watchers: Literal["everyone", "domain", "subscribers"] = "everyone"
    #: Addresses or CIDRs (the deployment's own proxies, which
    #: authenticated the user already) whose requests skip digest.
    trusted_sources: tuple[str, ...] = ()

    @field_validator("trusted_sources")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as e:
                raise ValueError(f"not an address or CIDR: {item!r}") from e
        return v

    @field_validator("realms")
    @classmethod
    def _lower_domains(cls, v: dict[str, str]) -> dict[str, str]:
        return {k.lower(): r for k, r in v.items()}

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


class Config(_Strict):
    """The whole node configuration (see README, "Configuration")."""

    node_id: str = Field("node1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,31}$")
    sip: str = "127.0.0.1:5060"
    admin: str = f"127.0.0.1:{ADMIN_PORT}"
    #: Host written in our Via/Contact; default: the SIP listen host.
    advertised_host: str | None = None
    #: SIP domains served (D2); empty = any.
    domains: tuple[str, ...] = ()
    packages: tuple[str, ...] = KNOWN_PACKAGES
    dialog: Dialog = Dialog()
    features: Features = Features()
    subscription_expiry: Expiry = Expiry()
    publication_expiry: Expiry = Expiry()
    registration_expiry: Expiry = Expiry(min=60, default=3600, max=7200)
    notify: Notify = Notify()
    limits: Limits = Limits()
    storage: Storage = Storage()
    #: Seconds between expiry sweeps (S25, S47).
    expiry_interval: float = Field(1.0, gt=0, le=60)
    #: File holding the admin API bearer secret.
    admin_secret_file: Path | None = None
    #: Where a generated secret is written when none is given.
    state_dir: Path = Path(".presence-node")
    #: Seconds SIGTERM waits for NOTIFYs in flight before exiting.
    drain_timeout: float = Field(5.0, ge=0, le=300)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    #: The cluster this node belongs to; required when sharing tags are set.
    cluster_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
    #: Sharing tags and their state at start-up (``active`` is taken only if
    #: nobody owns the tag yet; see README "Sharing tags").
    sharing_tags: dict[str, Literal["active", "backup"]] = Field(default_factory=dict)
    #: The tag stamped on new clustered subscriptions and publications
    #: received here; default: the only configured tag.
    default_tag: str | None = None
    #: Packages whose records are clustered (stamped with ``default_tag``);
    #: the others stay this node's own duty (its private tag).
    cluster_pres_events: tuple[str, ...] = ("presence", "dialog;sla")
    #: Resource lists (RFC 4662): list URI → member URIs (README "Resource lists").
    resource_lists: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    federation: Federation = Federation()
    transports: Transports = Transports()


    auth: Auth = Auth()

    @field_validator("sip", "admin")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v

    @field_validator("domains")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(d.lower() for d in v)

    @field_validator("packages")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in KNOWN_PACKAGES:
                raise ValueError(f"unknown package {name!r}; known: {', '.join(KNOWN_PACKAGES)}")
        if not v:
            raise ValueError("at least one package must be enabled")
        return v

    @field_validator("sharing_tags")
    @classmethod
    def _tag_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _TAG.match(name) or name.startswith("~"):
                raise ValueError(f"bad tag name {name!r} (letters, digits, _ . - ; up to 63)")
        return v

    @field_validator("cluster_pres_events")
    @classmethod
    def _clustered_known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in KNOWN_PACKAGES:
                raise ValueError(f"unknown package {name!r}; known: {', '.join(KNOWN_PACKAGES)}")
        return v

    @model_validator(mode="after")
    def _cluster(self) -> "Config":
        if self.sharing_tags and not self.cluster_id:
            raise ValueError("sharing_tags need cluster_id")
        if self.default_tag is not None and self.default_tag not in self.sharing_tags:
            raise ValueError(f"default_tag {self.default_tag!r} is not one of sharing_tags")
        if self.default_tag is None and len(self.sharing_tags) > 1:
            raise ValueError("default_tag is required when several sharing_tags are configured")
        if self.auth.enabled and self.auth.users_file is None and self.storage.backend != "postgres":
            if not self.auth.trusted_sources:
                raise ValueError("auth.mode digest or proxy needs auth.users_file without a database")
        if self.federation.enabled:
            if not self.cluster_id:
                raise ValueError("federation needs cluster_id")
            if any(p.id == self.node_id for p in self.federation.peers):
                raise ValueError("federation.peers must not list this node")
        from .service.lists import ResourceLists  # the same checks as the admin API's

        ResourceLists(self.limits.max_resource_lists, self.limits.max_list_members, self.resource_lists)
        return self

    @property
    def private_tag(self) -> str:
        """This node's own tag: records of packages not clustered, and all
        records of a node without sharing tags.  Always owned by this node."""
        return f"~{self.node_id}"

    @property
    def clustered_tag(self) -> str:
        """The tag new clustered records get."""
        if self.default_tag is not None:
            return self.default_tag
        if self.sharing_tags:
            return next(iter(self.sharing_tags))
        return self.private_tag

    def tag_for(self, event: str) -> str:
        return self.clustered_tag if event in self.cluster_pres_events else self.private_tag

    @property
    def location(self) -> str:
        return self.federation.location or self.node_id

    @property
    def sip_address(self) -> tuple[str, int]:
        return split_hostport(self.sip)

    @property
    def admin_address(self) -> tuple[str, int]:
        return split_hostport(self.admin)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (if given), apply flag ``overrides``, validate."""
    data: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        data.update(loaded)
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from e
