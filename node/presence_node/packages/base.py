"""The one interface every event package implements.

The presence core never reads PIDF, watcherinfo or dialog-info itself: it asks
the package.  The knobs mirror OpenSIPS's ``struct pres_ev`` (name, content
types, whether PUBLISH is taken; every package notifies expiry, S25), and the
hooks are the few places where a package's document format matters:
checking a published body, composing the published bodies of one presentity
into one document, and rendering that document for one watcher (the
per-subscription ``version`` of watcherinfo and dialog-info).

Everything here is pure: bytes and values in, bytes out, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from ..sip.errors import RemoteSipError
from ..sip.headers import media_type


class BadBody(RemoteSipError):
    """A published body that is not acceptable state (D8): answered 400."""

    status_hint = 400


class BodyOverLimit(BadBody):
    """A body beyond one of the ``limits`` settings, named in ``limit`` so
    that refusals can be counted per setting."""

    def __init__(self, limit: str, reason: str) -> None:
        super().__init__(reason)
        self.limit = limit


class UnsupportedBody(RemoteSipError):
    """A body whose Content-Type the package does not take (S44): 415."""

    status_hint = 415


def require_type(package: str, content_type: str, expected: str) -> None:
    """S44: a body of another media type than the package's one is 415,
    telling the publisher (``Accept``) what to send instead."""
    if media_type(content_type) != expected:
        raise UnsupportedBody(f"{package} takes {expected}, not {content_type!r}", headers=[("Accept", expected)])


@dataclass(frozen=True, slots=True)
class WatcherView:
    """One watcher of a presentity, as watcherinfo reports it (RFC 3858)."""

    id: str
    uri: str
    status: str  # pending | active | waiting | terminated
    event: str  # subscribe | approved | deactivated | timeout | ...


@dataclass(slots=True)
class Document:
    """A composed document, renderable per subscription.

    ``render(version, full)`` must be cheap: fan-out calls it once per watcher.
    Packages whose documents carry no per-watcher part return the same bytes
    every time.
    """

    body: bytes
    content_type: str
    # Byte offset where the decimal version is spliced in, or -1 if none.
    version_at: int = -1

    def render(self, version: int) -> bytes:
        if self.version_at < 0:
            return self.body
        return b"%s%d%s" % (self.body[: self.version_at], version, self.body[self.version_at :])


class EventPackage(Protocol):
    """An event package served by the node (RFC 6665 §5.4)."""

    #: The token in ``Event:``, e.g. ``presence`` or ``dialog;sla``-style full name.
    name: str
    #: Content types this package produces; the first is the default (S28).
    content_types: tuple[str, ...]
    #: Whether PUBLISH is accepted for this package (winfo: no).
    publishable: bool

    def check_publication(self, body: bytes, content_type: str) -> bytes:
        """Validate a published body; return the bytes to store.

        Raises :class:`UnsupportedBody` (415) or :class:`BadBody` (400).  The
        returned bytes are stored verbatim (foreign namespaces byte-faithful).
        """
        ...

    def compose(self, entity: str, bodies: Sequence[bytes], params: Mapping[str, str] | None = None) -> Document:
        """Compose the stored bodies of one presentity into one full document.

        ``entity`` is the presentity URI (``sip:user@domain``); ``bodies`` are
        the live publications, oldest first (may be empty: the offline
        document of D3).  ``params`` are the SUBSCRIBE's Event parameters
        (dialog package filters of S65).
        """
        ...
