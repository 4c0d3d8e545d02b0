"""Watcher information (RFC 3857 ``presence.winfo``, RFC 3858 format).

Unlike presence and dialog state, nobody publishes watcherinfo: the server
writes it from its own subscription table, so there is nothing to check or
compose, only a document to write.  Watcher URIs come from other people's
SUBSCRIBEs and are escaped.  ``version`` is per subscription (S61) and is
spliced in by :meth:`Document.render`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..xmlsafe import escape_attr, escape_text
from .base import Document, UnsupportedBody, WatcherView

WATCHERINFO_NS = "urn:ietf:params:xml:ns:watcherinfo"
WATCHERINFO_TYPE = "application/watcherinfo+xml"

_HEAD = f'<?xml version="1.0" encoding="UTF-8"?>\n<watcherinfo xmlns="{WATCHERINFO_NS}" version="'.encode()


def watcherinfo(resource: str, package: str, watchers: Sequence[WatcherView], full: bool) -> Document:
    """The watcherinfo document for ``resource``'s watchers of ``package``.

    ``full`` gives ``state="full"`` (the first NOTIFY and after a refresh,
    S60), otherwise ``state="partial"`` with only the watchers passed (the
    ones that changed).  Shape per S62.
    """
    parts = [
        f'" state="{"full" if full else "partial"}">\n'
        f'<watcher-list resource="{escape_attr(resource)}" package="{escape_attr(package)}">'
    ]
    parts.extend(
        f'\n<watcher id="{escape_attr(w.id)}" status="{escape_attr(w.status)}" '
        f'event="{escape_attr(w.event)}">{escape_text(w.uri)}</watcher>'
        for w in watchers
    )
    parts.append("\n</watcher-list>\n</watcherinfo>\n")
    return Document(_HEAD + "".join(parts).encode(), WATCHERINFO_TYPE, version_at=len(_HEAD))


class WatcherInfoPackage:
    """``Event: presence.winfo``: subscribe-only; documents come from :meth:`document`."""

    name: str = "presence.winfo"
    content_types: tuple[str, ...] = (WATCHERINFO_TYPE,)
    publishable: bool = False

    def check_publication(self, body: bytes, content_type: str) -> bytes:
        """Refuse any body: watcherinfo is the server's own state, never published."""
        raise UnsupportedBody("presence.winfo state cannot be published")

    def document(self, resource: str, package: str, watchers: Sequence[WatcherView], full: bool) -> Document:
        """See :func:`watcherinfo`."""
        return watcherinfo(resource, package, watchers, full)
