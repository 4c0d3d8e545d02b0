"""The PresenceCluster spec as a validated model, and the sharing tags and
the federation each mode implies.

The CRD's schema (``crds/presenceclusters.yaml``) rejects bad objects at the
API server; this model repeats those rules so that local mode, which has no
API server, refuses the same manifests with the same reasons.  Field names
are the CRD's camelCase; Python attributes are snake_case.

Pure: no I/O (``load_manifest`` takes an already parsed mapping).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "presence.example.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PresenceCluster"

Mode = Literal["ha", "loadBalancing", "federation", "federationRedundancy"]
#: Modes whose nodes of one location share a PostgreSQL database.
SHARED_DB_MODES = frozenset({"ha", "loadBalancing", "federationRedundancy"})
#: Modes whose nodes federate over the cluster channel.
FEDERATION_MODES = frozenset({"federation", "federationRedundancy"})
FederationMode = Literal["onDemandSharing", "fullSharing"]
#: ``spec.federationMode`` -> the node's ``federation.mode``.
NODE_FEDERATION_MODES = {"onDemandSharing": "on-demand-sharing", "fullSharing": "full-sharing"}
KNOWN_EVENTS = ("presence", "presence.winfo", "dialog", "dialog;sla", "message-summary", "as-feature-event")

#: A location name is a DNS label short enough that ``<location>-<index>``
#: stays a valid node id (32 characters) and pod name suffix.
_LOCATION = r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$"
_TAG = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


#: Node settings (dotted keys of the node's configuration reference) that the
#: operator derives from the rest of the spec or mounts from Secrets, so
#: ``spec.nodeConfig`` may not set them: a node's identity, addresses and
#: tags, where its database and secrets are, and its federation peers.
OPERATOR_SET_NODE_KEYS = frozenset({
    "node_id", "sip", "admin", "advertised_host", "cluster_id", "sharing_tags", "default_tag",
    "cluster_pres_events", "admin_secret_file", "state_dir",
    "storage.backend", "storage.dsn_file",
    "federation.mode", "federation.listen", "federation.location", "federation.peers", "federation.secret_file",
    "federation.tls_cert_file", "federation.tls_key_file", "federation.tls_ca_file",
})


class SpecError(ValueError):
    """A manifest that cannot be run; the message names the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class SecretKeyRef(_Model):
    """A key of a Secret: the DSN is never written in the spec itself."""

    name: str = Field(pattern=_K8S_NAME)
    key: str = Field("dsn", min_length=1)


class SecretRef(_Model):
    """The Secret holding the admin and cluster secrets (created by the
    operator when absent)."""

    name: str = Field(pattern=_K8S_NAME)


class FederationTls(_Model):
    """TLS for the cluster channel: a Secret in the layout cert-manager
    writes (``tls.crt``, ``tls.key``, ``ca.crt``), mounted on every node.
    Nodes check each other's certificate against ``ca.crt`` and the peer's
    address, so the certificate must name every pod's DNS name (e.g. one
    wildcard per location, ``*.<cluster>-<location>-nodes.<namespace>.svc``)."""

    secret_ref: SecretRef


#: The keys of the federationTls Secret, in the order cert, key, CA.
TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")


class Database(_Model):
    secret_ref: SecretKeyRef


class Location(_Model):
    name: str = Field(pattern=_LOCATION)
    nodes: int = Field(ge=1, le=32)
    database: Database | None = None


class TagSpec(_Model):
    """An explicitly listed sharing tag; ``node`` (its home, where it is
    active at start and fails back to) defaults to a round-robin pick."""

    name: str = Field(pattern=_TAG)
    location: str
    node: str | None = None


class Sip(_Model):
    port: int = Field(5060, ge=1, le=65535)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"


class Failover(_Model):
    policy: Literal["automatic", "manual"] = "automatic"
    #: Consecutive probe failures for this long judge a node down.
    detection_seconds: float = Field(1.0, ge=0.2, le=300)
    failback: Literal["never", "automatic"] = "never"


class PresenceClusterSpec(_Model):
    mode: Mode
    locations: tuple[Location, ...] = Field(min_length=1)
    tags: tuple[TagSpec, ...] | None = None
    events: tuple[str, ...] = ("presence", "dialog;sla")
    image: str = "presence-node:latest"
    resources: dict[str, Any] = Field(default_factory=dict)
    sip: Sip = Sip()
    failover: Failover = Failover()
    secret_ref: SecretRef | None = None
    #: How federated nodes share presentities (federation modes only;
    #: default onDemandSharing there).
    federation_mode: FederationMode | None = None
    #: Node settings in the node's own keys (README "Configuration
    #: reference"): expiry bounds, limits, notify and pool tuning... laid over
    #: what the operator sets; see :data:`OPERATOR_SET_NODE_KEYS`.
    node_config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("node_config")
    @classmethod
    def _node_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key in OPERATOR_SET_NODE_KEYS:
                raise ValueError(f"{key} is set by the operator, not in nodeConfig")
            if key in ("storage", "federation"):
                if not isinstance(value, dict):
                    raise ValueError(f"{key} must be a mapping")
                for sub in value:
                    if f"{key}.{sub}" in OPERATOR_SET_NODE_KEYS:
                        raise ValueError(f"{key}.{sub} is set by the operator, not in nodeConfig")
            elif key in ("subscription_expiry", "publication_expiry", "registration_expiry", "notify", "limits") \
                    and not isinstance(value, dict):
                raise ValueError(f"{key} must be a mapping")
        return v
    #: TLS for the cluster channel (federation modes only; default none:
    #: messages are authenticated, not encrypted).
    federation_tls: FederationTls | None = None

    @field_validator("events")
    @classmethod
    def _events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in KNOWN_EVENTS:
                raise ValueError(f"unknown event package {name!r}; known: {', '.join(KNOWN_EVENTS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PresenceClusterSpec":
        names = [loc.name for loc in self.locations]
        if self.federation_mode is not None and self.mode not in FEDERATION_MODES:
            raise ValueError(f"federationMode is only valid in modes federation and federationRedundancy "
                             f"(mode is {self.mode})")
        if self.federation_tls is not None and self.mode not in FEDERATION_MODES:
            raise ValueError(f"federationTls is only valid in modes federation and federationRedundancy "
                             f"(mode is {self.mode})")
        if len(set(names)) != len(names):
            raise ValueError("location names must be unique")
        for loc in self.locations:
            if self.mode in SHARED_DB_MODES and loc.database is None:
                raise ValueError(f"mode {self.mode} needs a database in every location ({loc.name} has none)")
            if self.mode == "federation" and loc.database is not None:
                raise ValueError("mode federation shares no database: remove locations[].database")
            if self.mode in ("ha", "federationRedundancy") and loc.nodes < 2:
                raise ValueError(f"mode {self.mode} needs at least 2 nodes per location ({loc.name} has {loc.nodes})")
        if self.tags is not None:
            if self.mode == "federation":
                raise ValueError("mode federation generates its tags (one per node); do not list tags")
            seen: set[str] = set()
            for t in self.tags:
                if t.location not in names:
                    raise ValueError(f"tag {t.name!r} names unknown location {t.location!r}")
                if t.name in seen:
                    raise ValueError(f"tag {t.name!r} is listed twice")
                seen.add(t.name)
                if t.node is not None and t.node not in node_names(self.location(t.location)):
                    raise ValueError(f"tag {t.name!r}: node {t.node!r} is not a node of location {t.location!r}")
        return self

    def location(self, name: str) -> Location:
        return next(loc for loc in self.locations if loc.name == name)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str  # also the node_id
    location: str
    index: int  # position in the location (0 = first)
    ordinal: int  # position in the whole cluster


@dataclass(frozen=True, slots=True)
class Tag:
    name: str
    location: str
    #: Where the tag is active at start and where automatic failback returns it.
    home: str
    #: False in federation: nobody else holds the tag's data, so it cannot move.
    movable: bool = True


def node_names(location: Location) -> list[str]:
    return [f"{location.name}-{i}" for i in range(location.nodes)]


def nodes(spec: PresenceClusterSpec) -> list[NodeSpec]:
    """Every node, in a stable order (location order, then index)."""
    out: list[NodeSpec] = []
    for loc in spec.locations:
        for i, name in enumerate(node_names(loc)):
            out.append(NodeSpec(name, loc.name, i, len(out)))
    return out


def tags(spec: PresenceClusterSpec) -> list[Tag]:
    """The sharing tags of the cluster: the explicit list, or per mode
    (ha: ``vip`` for one location, ``vip-<location>`` for several, home on
    node 0; loadBalancing and federation: one per node, named after it;
    federationRedundancy: one per location, named after it, home on node 0)."""
    if spec.tags is not None:
        out = []
        for loc in spec.locations:
            names = node_names(loc)
            listed = [t for t in spec.tags if t.location == loc.name]
            for i, t in enumerate(listed):
                out.append(Tag(t.name, loc.name, t.node or names[i % len(names)]))
        return out
    if spec.mode == "ha":
        single = len(spec.locations) == 1
        return [Tag("vip" if single else f"vip-{loc.name}", loc.name, node_names(loc)[0]) for loc in spec.locations]
    if spec.mode == "federationRedundancy":
        return [Tag(loc.name, loc.name, node_names(loc)[0]) for loc in spec.locations]
    movable = spec.mode == "loadBalancing"
    return [Tag(n.name, n.location, n.name, movable) for n in nodes(spec)]


def node_tags(spec: PresenceClusterSpec, node: NodeSpec) -> list[Tag]:
    """The sharing tags a node's configuration lists: its location's (the
    nodes of a location share a database, so any of them can take a tag);
    in ``federation``, where nothing is shared, only the node's own tag."""
    if spec.mode == "federation":
        return [t for t in tags(spec) if t.home == node.name]
    return [t for t in tags(spec) if t.location == node.location]


def federation_location(spec: PresenceClusterSpec, node: NodeSpec) -> str:
    """A node's federation location: in ``federation`` every node is its own
    location (its node id); otherwise the spec location (whose nodes share a
    database and the location's tag)."""
    return node.name if spec.mode == "federation" else node.location


def federation(spec: PresenceClusterSpec, node: NodeSpec, *, listen: str, address: Callable[[NodeSpec], str],
               secret_file: str, tls_dir: str | None = None) -> dict[str, Any] | None:
    """The ``federation`` section of a node's configuration (None outside
    the federation modes): its channel's ``listen`` address, its location,
    and every other node of the cluster as a peer, reached at
    ``address(peer)``; the cluster secret is read from ``secret_file``, and
    with ``federationTls`` the TLS files from ``tls_dir`` (where the Secret
    is mounted; local mode has none and runs the channel without TLS)."""
    if spec.mode not in FEDERATION_MODES:
        return None
    tls = {}
    if spec.federation_tls is not None and tls_dir is not None:
        tls = {f"tls_{kind}_file": f"{tls_dir}/{key}" for kind, key in zip(("cert", "key", "ca"), TLS_KEYS)}
    return {
        "mode": NODE_FEDERATION_MODES[spec.federation_mode or "onDemandSharing"],
        "listen": listen,
        "location": federation_location(spec, node),
        "peers": [{"id": p.name, "address": address(p), "location": federation_location(spec, p)}
                  for p in nodes(spec) if p.name != node.name],
        "secret_file": secret_file,
        **tls,
    }


def with_node_config(spec: PresenceClusterSpec, cfg: dict[str, Any]) -> dict[str, Any]:
    """A node's configuration ``cfg`` with ``spec.nodeConfig`` laid over it,
    sections merged key by key (the operator's own keys cannot be among
    them: the spec refuses those)."""
    out = dict(cfg)
    for key, value in spec.node_config.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Manifest:
    name: str
    spec: PresenceClusterSpec


def load_manifest(doc: Any) -> Manifest:
    """A parsed PresenceCluster manifest → name and validated spec."""
    if not isinstance(doc, dict):
        raise SpecError("the manifest must be a mapping")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise SpecError(f"expected apiVersion {API_VERSION} and kind {KIND}, got {doc.get('apiVersion')} {doc.get('kind')}")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name is required")
    try:
        spec = PresenceClusterSpec.model_validate(doc.get("spec") or {})
    except ValidationError as e:
        lines = [f"invalid PresenceCluster {name}:"]
        for err in e.errors():
            key = ".".join(str(p) for p in ("spec", *err["loc"]))
            lines.append(f"  {key}: {err['msg']}")
        raise SpecError("\n".join(lines)) from e
    return Manifest(name, spec)
