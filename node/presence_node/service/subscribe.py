"""SUBSCRIBE (RFC 6665 §4.2): initial, refresh, unsubscribe and poll.

An accepted SUBSCRIBE always gets 200 (D1, S13) with Expires (S14), then a
NOTIFY with the current state (S18, S22); ``Expires: 0`` ends the dialog
with a final ``terminated;reason=timeout`` NOTIFY (S23) or, out of dialog,
is a poll answered by exactly one such NOTIFY (S24).  Every subscription is
active at once (D4), except that a watcher list is only for its owner.
A new subscription that does not fit the limits on live state gets 503 or
403 (#12, :mod:`.capacity`); refreshes and unsubscribes always go on.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from ..sip.errors import ParseError, RemoteSipError
from ..sip.headers import Event, media_type, parse_name_addr, parse_uri
from ..sip.message import Request
from ..sip.status import Status
from ..storage import Subscription
from .context import Incoming, Service
from .features import FEATURES, check_own, feature_subscribe
from .notify import FIRST_CSEQ, FIRST_VERSION, WINFO
from .owners import Owners
from .reply import Reply
from ..packages.rlmi import EVENTLIST, RLMI_TYPE

#: Why a SUBSCRIBE whose NOTIFYs could not be sent at all is refused (#12.3).
UNREACHABLE = "Contact (or Record-Route) of an address family this node does not serve"

#: Dialog-package event parameters that select dialogs (RFC 4235 §3.2, S65).
DIALOG_FILTERS = ("call-id", "to-tag", "from-tag", "include-session-description")


async def handle_subscribe(svc: Service, inc: Incoming) -> Reply:
    req = inc.request
    event = svc.event_of(req)
    if svc.packages.get(event.key) is None:
        raise svc.bad_event()
    to = inc.to
    if to.tag:
        return await _in_dialog(svc, inc, event, to.tag)
    return await _initial(svc, inc, event)


async def _initial(svc: Service, inc: Incoming, event: Event) -> Reply:
    req = inc.request
    presentity = svc.resource(req)
    package = svc.packages.get(event.key)
    assert package is not None
    members = svc.notifier.lists.get(presentity) if svc.notifier.lists is not None else None
    if members is not None and event.key != WINFO:
        if EVENTLIST not in _option_tags(req, "supported"):
            # RFC 4662 §5.1: a list is only for a subscriber that can read one.
            raise RemoteSipError("a resource list needs eventlist", status=Status.EXTENSION_REQUIRED,
                                 headers=[("Require", EVENTLIST)])
        accept = _negotiate(req, (*package.content_types, "multipart/related", RLMI_TYPE))
    else:
        accept = _negotiate(req, package.content_types)
    frm = inc.from_
    if not frm.tag:
        raise RemoteSipError("From has no tag", status=Status.BAD_REQUEST)
    try:
        watcher = parse_uri(frm.uri).aor
    except ParseError as e:
        raise RemoteSipError("bad From URI", status=Status.BAD_REQUEST) from e
    if event.key == WINFO and watcher != presentity:
        raise RemoteSipError("a watcher list is only for its presentity", status=Status.FORBIDDEN)
    if event.key == FEATURES:
        check_own(watcher, presentity)
    contacts = req.headers.values("contact")
    if not contacts:
        raise RemoteSipError("SUBSCRIBE without Contact", status=Status.BAD_REQUEST)
    contact = _contact_uri(contacts[0])
    expires = svc.granted_expiry(req, svc.config.subscription_expiry)
    cseq = inc.cseq
    to_raw = req.headers.get("to") or ""
    sub = Subscription(
        id=svc.ids.tag(),
        call_id=req.headers.get("call-id") or "",
        remote_tag=frm.tag,
        presentity=presentity,
        # Interned: the same few values repeat across 100k subscriptions.
        event=sys.intern(event.key),
        event_header=sys.intern(_event_header(event)),
        event_params=_filters(event) if event.package == "dialog" else "",
        watcher=watcher,
        remote_uri=req.headers.get("from") or "",
        local_uri=to_raw,
        contact=contact,
        routes=", ".join(req.headers.values("record-route")),
        transport=inc.transport,
        source=f"{inc.host}:{inc.port}",
        accept=accept,
        expires_at=inc.now + expires,
        remote_cseq=cseq,
        # Stored with the first NOTIFY already counted: Notifier.first sends
        # CSeq FIRST_CSEQ, version FIRST_VERSION without asking storage.
        cseq=FIRST_CSEQ,
        version=FIRST_VERSION + 1,
        status="active",
        tag=svc.config.tag_for(event.key),
    )
    if not svc.notifier.sender.reachable(sub):
        raise RemoteSipError(UNREACHABLE, status=Status.BAD_REQUEST)
    headers = [("Expires", str(expires)), ("Contact", f"<{svc.contact[inc.transport]}>")]
    if members is not None and event.key != WINFO:
        headers.append(("Require", EVENTLIST))
    if expires == 0:
        # S24: a poll; nothing is stored, exactly one terminated NOTIFY,
        # which is this dialog's first (terminated() counts it itself).
        sub.cseq, sub.version = FIRST_CSEQ - 1, FIRST_VERSION
        return Reply(Status.OK, headers, to_tag=sub.id, then=lambda: svc.notifier.terminated(sub, "timeout"))
    svc.capacity.admit("subscription", inc.host)
    changed = await feature_subscribe(svc, inc, presentity) if event.key == FEATURES else None
    elsewhere = _sender_elsewhere(svc, sub)
    if elsewhere is not None:
        # Stored with no NOTIFY counted: the first one is the owner's (or
        # ours if it does not listen), CSeq FIRST_CSEQ from storage.
        sub.cseq, sub.version = FIRST_CSEQ - 1, FIRST_VERSION
    if event.key == WINFO:
        # Its first document lists the presence watchers: read after the insert.
        await svc.storage.insert_subscription(sub)
        state, winfo_watchers = None, 0
    else:
        # One storage step: the insert, the state for the first NOTIFY and
        # whether anyone watches the presentity's watcher list.
        winfo = WINFO if event.key == "presence" and svc.packages.get(WINFO) is not None else None
        state, winfo_watchers = await svc.storage.insert_subscription_state(sub, inc.now, winfo)

    async def first_notify() -> None:
        if changed is not None:
            await changed()
        current = state
        try:
            if svc.federation is not None:
                if elsewhere is None:
                    svc.notifier.hold(sub)
                if await svc.federation.subscribed(sub, state or []):
                    current = None  # it waited for a query answer: read the state anew
        finally:
            if elsewhere is None:
                await svc.notifier.first(sub, current)
            else:
                await elsewhere.pass_on([sub])
        if winfo_watchers:
            await svc.notifier.watcher_changed(sub, "active", "subscribe")

    return Reply(Status.OK, headers, to_tag=sub.id, then=first_notify)


async def _in_dialog(svc: Service, inc: Incoming, event: Event, tag: str) -> Reply:
    req = inc.request
    sub = await svc.storage.subscription(tag)
    frm = inc.from_
    if (
        sub is None
        or sub.call_id != req.headers.get("call-id")
        or sub.remote_tag != frm.tag
        or sub.event != event.key
        or _event_header(event) != sub.event_header
    ):
        raise RemoteSipError("no such subscription", status=Status.CALL_DOES_NOT_EXIST)
    cseq = inc.cseq
    if cseq < sub.remote_cseq:
        raise RemoteSipError("CSeq lower than the last one", status=Status.SERVER_INTERNAL_ERROR)
    expires = svc.granted_expiry(req, svc.config.subscription_expiry)
    contact_hdr = req.headers.values("contact")
    contact = _contact_uri(contact_hdr[0]) if contact_hdr else None
    if contact is not None and contact != sub.contact:
        if not svc.notifier.sender.reachable(replace(sub, contact=contact)):
            raise RemoteSipError(UNREACHABLE, status=Status.BAD_REQUEST)
    headers = [("Expires", str(expires)), ("Contact", f"<{svc.contact[inc.transport]}>")]
    elsewhere = _sender_elsewhere(svc, sub)
    if expires == 0:
        if elsewhere is None:
            removed, handed = await svc.storage.delete_subscription(sub.id), False
        else:
            removed, handed = await elsewhere.end(sub.id, "timeout")
        if removed is None:
            raise RemoteSipError("no such subscription", status=Status.CALL_DOES_NOT_EXIST)

        async def last_notify() -> None:
            if not handed:  # else the owner of its tag sends it
                await svc.notifier.terminated(removed, "timeout")
            await svc.notifier.watcher_changed(removed, "terminated", "timeout")
            if svc.federation is not None:
                await svc.federation.unwatched([(removed.presentity, removed.event)])

        return Reply(Status.OK, headers, then=last_notify)
    changed = await feature_subscribe(svc, inc, sub.presentity) if event.key == FEATURES else None
    svc.notifier.full_state_next(sub.id)  # a list's NOTIFY after a refresh carries every member
    refreshed = await svc.storage.refresh_subscription(
        sub.id, expires_at=inc.now + expires, remote_cseq=cseq, contact=contact
    )
    if refreshed is None:
        raise RemoteSipError("no such subscription", status=Status.CALL_DOES_NOT_EXIST)
    if changed is not None:
        return Reply(Status.OK, headers, then=changed)  # notifies this dialog too
    if elsewhere is not None:
        return Reply(Status.OK, headers, then=lambda: elsewhere.pass_on([refreshed]))
    return Reply(Status.OK, headers, then=lambda: svc.notifier.notify([refreshed]))


def _option_tags(req: Request, header: str) -> set[str]:
    """The option tags of every ``Supported`` (or ``Require``) header."""
    return {t.strip().lower() for v in req.headers.values(header) for t in v.split(",") if t.strip()}


def _sender_elsewhere(svc: Service, sub: Subscription) -> Owners | None:
    """The owners when another node, the owner of the subscription's tag,
    sends its NOTIFYs (shared database); None when this node does."""
    owners = svc.owners
    return owners if owners is not None and not owners.sends(sub.tag) else None


def _contact_uri(value: str) -> str:
    try:
        uri = parse_name_addr(value).uri
        parse_uri(uri)
    except ParseError as e:
        raise RemoteSipError("bad Contact", status=Status.BAD_REQUEST) from e
    return uri


def _negotiate(req: Request, offered: tuple[str, ...]) -> str:
    """S28: the first type we produce that Accept allows, else 406."""
    accepted = [media_type(v) for v in req.headers.values("accept")]
    if not accepted:
        return offered[0]
    for ctype in offered:
        major = ctype.split("/", 1)[0]
        if ctype in accepted or "*/*" in accepted or f"{major}/*" in accepted:
            return ctype
    raise RemoteSipError(
        "no acceptable body type", status=Status.NOT_ACCEPTABLE, headers=[("Accept", ", ".join(offered))]
    )


def _event_header(event: Event) -> str:
    """Package (byte for byte, S19), ``;sla`` when present, and ``id``."""
    out = event.package
    if event.key == "dialog;sla":
        out += ";sla"
    if event.id is not None:
        out += f";id={event.id}"
    return out


def _filters(event: Event) -> str:
    parts = []
    for name in DIALOG_FILTERS:
        if name in event.params:
            value = event.params[name]
            parts.append(name if value is None else f"{name}={value}")
    return ";".join(parts)
