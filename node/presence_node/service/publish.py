"""PUBLISH (RFC 3903 §6): initial, refresh, modify and remove.

The steps follow §6 in order, so each refusal is the one the RFC names:
404 for a resource we do not serve (S42), 489 for a bad Event (S41), 400
for several etags (S40), 423 for a too-brief Expires (S35), 415/400 for a
body the package refuses (S44, D8), 400 for no body and no etag (S43), and
412 for an etag that names no live publication (S39).  An initial PUBLISH
that does not fit the limits on live state gets 503 or 403 (#12, see
:mod:`.capacity`; 403 too when its presentity holds
``limits.max_publications_per_presentity`` of its package, counted in the
insert's own storage step).  Each accepted PUBLISH
is one atomic storage step, then the NOTIFYs (S37, S38) and, in a
federation, the message to the locations that watch it; a refused one is
never sent.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..packages.base import BodyOverLimit
from ..sip.errors import RemoteSipError
from ..sip.headers import media_type
from ..sip.status import Status
from ..storage import PresentityFull, Publication
from .context import Incoming, Service
from .reply import Reply


@dataclass(frozen=True, slots=True)
class PublishAsk:
    """One PUBLISH as §6 sees it once its headers are read, whichever way it
    came: by SIP, or from a backend through the admin API (#17.4), so both
    get the same checks, entity tags, expiry and NOTIFYs."""

    presentity: str
    key: str  # package key: presence, dialog, dialog;sla, message-summary
    etag: str | None
    expires: int  # granted (D10)
    body: bytes
    content_type: str  # bare media type
    source: str  # address it came from (the per-source limits count it)
    now: float
    #: False for a backend's push through the admin API (bearer secret):
    #: ``limits.max_records_per_source`` bounds unauthenticated addresses.
    per_source: bool = True


async def handle_publish(svc: Service, inc: Incoming) -> Reply:
    req = inc.request
    presentity = svc.resource(req)
    key = svc.event_of(req).key
    svc.publishable(key)
    etags = req.headers.values("sip-if-match")
    if len(etags) > 1:
        raise RemoteSipError("only one entity-tag is allowed in SIP-If-Match", status=Status.BAD_REQUEST)
    ask = PublishAsk(
        presentity,
        key,
        etags[0] if etags else None,
        svc.granted_expiry(req, svc.config.publication_expiry),
        req.body,
        media_type(req.headers.get("content-type")),
        inc.host,
        inc.now,
    )
    return await publish(svc, ask)


async def publish(svc: Service, ask: PublishAsk) -> Reply:
    """Steps 5-8 of §6 for a request whose resource, package and expiry
    are already checked: the body, then the insert, modify, refresh or
    removal, with the NOTIFYs to send once answered."""
    presentity, key, etag, expires, now = ask.presentity, ask.key, ask.etag, ask.expires, ask.now
    package = svc.publishable(key)
    body, ctype = ask.body, ask.content_type
    stored: bytes | None = None
    if body:
        if len(body) > svc.config.limits.max_body_size:
            svc.metrics.publish_refused(key, "max_body_size")
            raise RemoteSipError("body too large", status=Status.REQUEST_ENTITY_TOO_LARGE)
        if ctype not in package.content_types:
            raise RemoteSipError(
                f"{ctype or 'no Content-Type'} is not a {key} document",
                status=Status.UNSUPPORTED_MEDIA_TYPE,
                headers=[("Accept", ", ".join(package.content_types))],
            )
        try:
            stored = package.check_publication(body, ctype)
        except BodyOverLimit as refused:
            svc.metrics.publish_refused(key, refused.limit)
            raise
    elif etag is None:
        raise RemoteSipError("an initial PUBLISH needs a body", status=Status.BAD_REQUEST)

    ok = [("Expires", str(expires))]
    if etag is None:
        assert stored is not None
        if expires == 0:
            return Reply(Status.OK, ok)  # nothing to keep
        svc.capacity.admit("publication", ask.source, per_source=ask.per_source)
        new = svc.ids.etag()
        pub = Publication(
            presentity, key, new, stored, ctype, now + expires, now, svc.config.tag_for(key), source=sys.intern(ask.source)
        )
        # The watchers come with the insert: one storage step, not two.
        try:
            watchers = await svc.storage.insert_publication_watched(
                pub, now, svc.notifier.sender_id, cap=svc.config.limits.max_publications_per_presentity
            )
        except PresentityFull:
            raise svc.capacity.presentity_full(presentity, key) from None
        svc.metrics.publication_change(key, "new")
        if svc.federation is not None:
            svc.federation.published(presentity, key, None, pub)
        async def tell() -> None:
            await svc.notifier.notify(watchers)
            await svc.notifier.lists_changed(presentity, key)

        return Reply(Status.OK, [("SIP-ETag", new), *ok], then=tell)

    if expires == 0:
        removed = await svc.storage.delete_publication(presentity, key, etag, now)
        if removed is None:
            raise _unknown_etag()
        svc.metrics.publication_change(key, "remove")
        if svc.federation is not None:
            svc.federation.published(presentity, key, etag, None)
        return Reply(Status.OK, ok, then=lambda: svc.notifier.state_changed(presentity, key))

    new = svc.ids.etag()
    updated = await svc.storage.replace_publication(
        presentity, key, etag, now, new_etag=new, expires_at=now + expires, body=stored, content_type=ctype or None
    )
    if updated is None:
        raise _unknown_etag()
    if svc.federation is not None:
        svc.federation.published(presentity, key, etag, updated)
    headers = [("SIP-ETag", new), *ok]
    if stored is None:  # refresh: state unchanged, nobody to tell (S36)
        svc.metrics.publication_change(key, "refresh")
        return Reply(Status.OK, headers)
    svc.metrics.publication_change(key, "modify")
    return Reply(Status.OK, headers, then=lambda: svc.notifier.state_changed(presentity, key))


def _unknown_etag() -> RemoteSipError:
    return RemoteSipError("unknown or expired entity-tag", status=Status.CONDITIONAL_REQUEST_FAILED)
