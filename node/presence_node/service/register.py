"""REGISTER (D5): a minimal registrar so phones that need one work against a
node alone.  Bindings are kept with their expiry, and pruned by the expiry
sweep of the owner of their sharing tag (the tag clustered records get:
any node of a cluster serves them); no authentication.  A new binding that
does not fit the limits on live state gets 503 or 403 (#12,
:mod:`.capacity`); refreshes and removals always go on."""

from __future__ import annotations

import sys

from ..sip.errors import ParseError, RemoteSipError
from ..sip.headers import parse_expires, parse_name_addr, parse_uri
from ..sip.status import Status
from ..storage import Registration
from .context import Incoming, Service
from .reply import Reply


async def handle_register(svc: Service, inc: Incoming) -> Reply:
    req = inc.request
    try:
        aor = parse_uri(inc.to.uri).aor
        cseq = inc.cseq
        header_expiry = parse_expires(req.headers.get("expires"))
    except ParseError as e:
        raise RemoteSipError(str(e), status=Status.BAD_REQUEST) from e
    domains = svc.config.domains
    if domains and aor.rsplit("@", 1)[-1] not in domains:
        raise RemoteSipError("domain not served here", status=Status.NOT_FOUND)
    bounds = svc.config.registration_expiry
    call_id = req.headers.get("call-id") or ""
    contacts = req.headers.values("contact")
    if contacts == ["*"]:
        if header_expiry != 0:
            raise RemoteSipError("Contact: * needs Expires: 0", status=Status.BAD_REQUEST)
        for reg in await svc.storage.bindings(aor, inc.now):
            await svc.storage.delete_binding(aor, reg.contact)
        return Reply(Status.OK)
    # Every Contact is checked before any is stored: a refused REGISTER
    # changes nothing.
    changes: list[tuple[str, int]] = []  # (contact, seconds granted; 0 = remove)
    for value in contacts:
        try:
            na = parse_name_addr(value)
            param = na.params.get("expires")
            asked = parse_expires(param) if param is not None else header_expiry
        except ParseError as e:
            raise RemoteSipError("bad Contact", status=Status.BAD_REQUEST) from e
        if asked is None:
            asked = bounds.default
        if 0 < asked < bounds.min:
            raise RemoteSipError(
                "interval too brief", status=Status.INTERVAL_TOO_BRIEF, headers=[("Min-Expires", str(bounds.min))]
            )
        changes.append((na.uri, min(asked, bounds.max)))
    held = {r.contact for r in await svc.storage.bindings(aor, inc.now)}
    for contact, granted in changes:
        if granted and contact not in held:
            svc.capacity.admit("registration", inc.host)
    source = sys.intern(inc.host)
    for contact, granted in changes:
        if granted == 0:
            await svc.storage.delete_binding(aor, contact)
        else:
            reg = Registration(aor, contact, inc.now + granted, call_id, cseq, svc.config.clustered_tag, source)
            await svc.storage.set_binding(reg)
    now = inc.now
    headers = [
        ("Contact", f"<{r.contact}>;expires={max(0, int(r.expires_at - now))}")
        for r in await svc.storage.bindings(aor, now)
    ]
    return Reply(Status.OK, headers)
