"""Flat records, one per table row.

Slotted and small on purpose: an idle subscription must fit in well under
2 KiB (the memory target at 100k subscriptions), so there is no dict per
record and no copy of the SIP message it came from.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Publication:
    """One PUBLISHed state of a presentity for one event package (RFC 3903)."""

    presentity: str  # canonical AOR user@domain
    event: str  # package key: presence | dialog | dialog;sla
    etag: str
    body: bytes
    content_type: str
    expires_at: float  # wall-clock epoch seconds
    received_at: float  # orders composition: oldest first
    tag: str  # sharing tag of the owner (duties)
    #: "" when received here by SIP (this node or its location's database
    #: holds it); else the federation location it was replicated from.
    origin: str = ""
    #: IP address the initial PUBLISH came from ("" for a replica): whose
    #: share of ``limits.max_records_per_source`` it takes.
    source: str = ""


@dataclass(slots=True)
class Subscription:
    """One subscription dialog, as the notifier needs it to send NOTIFYs.

    ``id`` is our own To tag: unique cluster-wide (node-prefixed), so it is
    the primary key and in-dialog SUBSCRIBEs are found by it, then checked
    against Call-ID and the watcher's From tag.
    """

    id: str  # our (notifier) tag
    call_id: str
    remote_tag: str  # the subscriber's From tag
    presentity: str  # canonical AOR
    event: str  # package key (presence, presence.winfo, dialog, dialog;sla)
    event_header: str  # Event value echoed in NOTIFYs (package[;sla][;id=])
    event_params: str  # dialog filter parameters (S65), "" when none
    watcher: str  # watcher AOR (From), for winfo and admin listing
    remote_uri: str  # From header value of the SUBSCRIBE (To of our NOTIFYs)
    local_uri: str  # To header value without tag (From of our NOTIFYs)
    contact: str  # remote target
    routes: str  # route set, comma-joined Record-Route values ("" = none)
    transport: str  # udp | tcp
    source: str  # host:port the SUBSCRIBE came from (NAT / rport fallback)
    accept: str  # body type chosen for NOTIFYs
    expires_at: float
    remote_cseq: int  # last SUBSCRIBE CSeq seen (S09)
    cseq: int  # last NOTIFY CSeq sent
    version: int  # next document version (winfo, dialog-info)
    status: str  # active | pending | terminated
    tag: str  # sharing tag (duties)


@dataclass(slots=True)
class Registration:
    """A REGISTER binding (D5)."""

    aor: str
    contact: str
    expires_at: float
    call_id: str
    cseq: int
    tag: str  # sharing tag: its owner prunes the binding once expired
    source: str = ""  # IP address the REGISTER came from (per-source limit)


@dataclass(frozen=True, slots=True)
class Usage:
    """Live records a storage holds, for the limits on live state.

    Exact for the memory backend; for a shared database, the counts of the
    last recount plus what this node stored since (see
    :meth:`~presence_node.storage.base.Storage.refresh_usage`)."""

    presentities: int  # (presentity, package) pairs with a publication
    publications: int
    subscriptions: int
    registrations: int
    #: Live records per source IP (publications, subscriptions, bindings).
    by_source: dict[str, int]

    def source(self, ip: str) -> int:
        return self.by_source.get(ip, 0)


def source_ip(source: str) -> str:
    """The IP address of a subscription's ``host:port`` source."""
    return source.rpartition(":")[0]


@dataclass(slots=True)
class TagState:
    """A sharing tag as the database holds it: who owns it, at which epoch.

    The epoch rises with every change of owner; a node acts for a tag only
    while the stored owner is itself, checked in the same transaction as
    the action (fencing)."""

    name: str
    owner: str | None
    epoch: int
    since: float


def differing_keys(have: list[Publication], want: list[Publication]) -> set[tuple[str, str]]:
    """The (presentity, event) keys whose publications differ between two
    lists (by etag, body and expiry): what a federation resync changes."""

    def index(pubs: list[Publication]) -> dict[tuple[str, str], set[tuple[str, bytes, float]]]:
        out: dict[tuple[str, str], set[tuple[str, bytes, float]]] = {}
        for p in pubs:
            out.setdefault((p.presentity, p.event), set()).add((p.etag, bytes(p.body), p.expires_at))
        return out

    a, b = index(have), index(want)
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
