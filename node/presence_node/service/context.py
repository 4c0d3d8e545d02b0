"""What every handler shares: the service object and the incoming request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..config import Config, Expiry
from ..packages.base import EventPackage
from ..packages.registry import PackageRegistry
from ..sip.errors import ParseError, RemoteSipError
from ..sip.headers import Event, NameAddr, parse_event, parse_expires, parse_uri
from ..sip.message import Request
from ..sip.status import Status
from ..storage import Publication, Storage, Subscription
from .capacity import Capacity
from .ids import Ids
from .notify import Notifier, Unwatching
from .owners import Owners

if TYPE_CHECKING:
    from .features import FeatureHook


@dataclass(slots=True)
class Incoming:
    """A request the dispatcher validated, with what it already parsed."""

    request: Request
    host: str  # source address
    port: int
    transport: str  # udp | tcp
    now: float  # wall clock at arrival
    from_: NameAddr
    to: NameAddr
    cseq: int


class ServiceMetrics(Protocol):
    def publication_change(self, event: str, kind: str) -> None: ...

    def notify_sent(self, event: str) -> None: ...

    def notify_failed(self, event: str, code: int) -> None: ...

    def refused(self, limit: str) -> None: ...


class Federating(Unwatching, Protocol):
    """The federation as the SIP handlers see it (None when disabled)."""

    def published(self, presentity: str, event: str, old_etag: str | None, pub: Publication | None) -> None: ...

    async def subscribed(self, sub: Subscription, pubs: list[Publication]) -> bool: ...


class Service:
    """The node's presence logic with its collaborators."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        packages: PackageRegistry,
        notifier: Notifier,
        ids: Ids,
        metrics: ServiceMetrics,
    ) -> None:
        self.config = config
        self.storage = storage
        self.packages = packages
        self.notifier = notifier
        self.ids = ids
        self.metrics = metrics
        #: The limits on live state every new record must fit under.
        self.capacity = Capacity(config.limits, storage, metrics)
        self.allow_events = ", ".join(packages.names)
        #: Our Contact URI per transport and SIP port; set once sockets are bound.
        self.contact: dict[str, str] = {}
        self.sip_port = config.sip_address[1]
        self.federation: Federating | None = None
        #: Shared database: only the owner of a subscription's tag sends its NOTIFYs.
        self.owners: Owners | None = None
        #: Tells the PBX of feature key changes (``features.webhook_url``).
        self.feature_hook: FeatureHook | None = None

    def resource(self, req: Request) -> str:
        """The canonical AOR named by the Request-URI (D2, S49); 404 for a
        domain this node does not serve, 416 for a scheme it cannot."""
        return self.resource_of(req.uri)

    def resource_of(self, text: str) -> str:
        """:meth:`resource` for a URI given as text (the admin API's)."""
        try:
            uri = parse_uri(text)
        except ParseError as e:
            raise RemoteSipError("bad Request-URI", status=Status.BAD_REQUEST) from e
        if uri.scheme not in ("sip", "sips", "pres"):
            raise RemoteSipError("unsupported URI scheme", status=Status.UNSUPPORTED_URI_SCHEME)
        if not uri.user:
            raise RemoteSipError("no such resource", status=Status.NOT_FOUND)
        domains = self.config.domains
        if domains and uri.host not in domains:
            raise RemoteSipError(f"domain {uri.host} is not served here", status=Status.NOT_FOUND)
        return uri.aor

    def bad_event(self) -> RemoteSipError:
        return RemoteSipError("unsupported event package", status=Status.BAD_EVENT, headers=[("Allow-Events", self.allow_events)])

    def publishable(self, key: str) -> EventPackage:
        """The package PUBLISH ``key`` goes to; 489 for one not served or
        not publishable (winfo)."""
        package = self.packages.get(key)
        if package is None or not package.publishable:
            raise self.bad_event()
        return package  # type: ignore[return-value]  # publishable: an EventPackage

    def event_of(self, req: Request) -> Event:
        raw = req.headers.get("event")
        if raw is None:
            raise self.bad_event()
        try:
            return parse_event(raw)
        except ParseError as e:
            raise self.bad_event() from e

    def granted_expiry(self, req: Request, bounds: Expiry) -> int:
        """Expires to grant (D10): default when absent, 423 below the
        minimum, capped at the maximum; 0 stays 0."""
        try:
            asked = parse_expires(req.headers.get("expires"))
        except ParseError as e:
            raise RemoteSipError("bad Expires", status=Status.BAD_REQUEST) from e
        return self.grant(asked, bounds)

    @staticmethod
    def grant(asked: int | None, bounds: Expiry) -> int:
        """:meth:`granted_expiry` for an interval already read."""
        if asked is None:
            return bounds.default
        if asked == 0:
            return 0
        if asked < bounds.min:
            raise RemoteSipError(
                "interval too brief", status=Status.INTERVAL_TOO_BRIEF, headers=[("Min-Expires", str(bounds.min))]
            )
        return min(asked, bounds.max)
