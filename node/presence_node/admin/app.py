"""The admin API application.  Every path but health and readiness needs
``Authorization: Bearer <secret>``; bad query parameters get a 400 with a
JSON error naming the parameter, and nothing here changes state.  Every
error is a JSON object ``{"error": ...}``, aiohttp's own (404, 405, 413)
and unexpected exceptions included: scripts parse the body whatever the
status."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..service.lists import ListRefused
from ..service.lists import canonical as canonical_list
from ..service.publish import PublishAsk, publish
from ..service.tags import PrivateTag, TagView
from ..sip.errors import RemoteSipError
from ..sip.headers import media_type
from ..storage.subscribers import Subscriber
from ..storage import StaleEpoch, StorageUnavailable, UnknownTag
from . import contract

if TYPE_CHECKING:
    from ..node import Node


SECRET: web.AppKey[str] = web.AppKey("secret", str)


log = logging.getLogger(__name__)

#: Longest ``offset``/``limit`` value read: int() of a few thousand digits
#: raises (and costs), and no valid value is longer than this.
_MAX_DIGITS = 10

#: Seconds /readyz waits for the storage's answer.
READY_PING_TIMEOUT = 0.3


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """The outermost layer: whatever went wrong, the answer is JSON."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        resp = _error(e.status, e.reason)
        for name in ("Allow", "WWW-Authenticate", "Retry-After"):
            if name in e.headers:
                resp.headers[name] = e.headers[name]
        return resp
    except StorageUnavailable as e:
        log.warning("admin request without storage", extra={"path": request.path, "error": str(e)})
        resp = _error(503, f"storage unavailable: {e}")
        resp.headers["Retry-After"] = "5"
        return resp
    except Exception:
        log.exception("admin request failed", extra={"path": request.path})
        return _error(500, "internal error")


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path in contract.OPEN_PATHS:
        return await handler(request)
    secret = request.app[SECRET]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # Header bytes that are not UTF-8 reach us as lone surrogates, which a
    # plain encode() refuses (that was a 500): compare the bytes received.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.encode("utf-8", "surrogateescape"), secret.encode("utf-8", "surrogateescape")
    ):
        resp = _error(401, "missing or wrong bearer secret")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="presence-node"'
        return resp
    return await handler(request)


async def _tag_call(call: Any) -> web.Response:
    """Run a tag change; map the storage refusals to HTTP."""
    try:
        view = await call()
    except UnknownTag as e:
        return _error(404, f"no sharing tag {e.args[0]!r}")
    except StaleEpoch as e:
        return _error(409, str(e), current_epoch=e.current.epoch, owner=e.current.owner)
    except PrivateTag as e:
        return _error(403, str(e))
    return web.json_response(_tag(view))


def _tag(view: TagView) -> contract.Tag:
    return contract.Tag(
        tag=view.name, state=view.state, owner=view.owner, epoch=view.epoch, since=view.since, private=view.private
    )


def _paging(request: web.Request) -> tuple[int, int]:
    out = []
    for name, default, hi in (("offset", 0, 10**9), ("limit", contract.DEFAULT_LIMIT, contract.MAX_LIMIT)):
        raw = request.query.get(name, str(default))
        ok = raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS
        if not ok or int(raw) > hi or (name == "limit" and int(raw) == 0):
            raise _bad_request(f"{name} must be an integer in [{0 if name == 'offset' else 1}, {hi}]")
        out.append(int(raw))
    return out[0], out[1]


#: A pushed state's SIP refusal as HTTP (the SIP code goes in the body):
#: 416 (URI scheme) and 423 (interval too brief) are the client's bad
#: request here, 489 (no such package) a resource that does not exist.
_HTTP_OF_SIP = {416: 400, 423: 400, 489: 404}


def _refused(e: RemoteSipError) -> web.Response:
    code = e.status_hint
    extra: dict[str, Any] = {"sip_status": code}
    headers = dict(e.headers)
    if "Min-Expires" in headers:
        extra["min_expires"] = int(headers["Min-Expires"])
    resp = _error(_HTTP_OF_SIP.get(code, code if 400 <= code < 600 else 400), e.reason or "refused", **extra)
    for name in ("Retry-After", "Accept"):
        if name in headers:
            resp.headers[name] = headers[name]
    return resp


def _if_match(request: web.Request) -> str | None:
    """The entity tag of ``If-Match``, quoted as HTTP writes it or bare as SIP does."""
    raw = request.headers.get("If-Match")
    return raw.strip().strip('"') or None if raw is not None else None


def _known_params(request: web.Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise _bad_request(f"unknown query parameter(s): {', '.join(unknown)}")


def make_app(node: "Node", secret: str) -> web.Application:
    app = web.Application(middlewares=[_json_errors, _auth], client_max_size=64 * 1024)
    app[SECRET] = secret

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": node.config.node_id})

    async def readyz(_: web.Request) -> web.Response:
        # The reason tells an orchestrator a node that cannot serve from a
        # node whose storage cannot: a shared database that every node of
        # a location loses alike is no reason to move tags between them.
        if not node.ready:
            return _error(503, "not ready", node=node.config.node_id, reason=contract.NOT_READY)
        try:
            # Well inside the probers' own timeouts (the supervisor's and
            # the operator's 0.4 s): a database that does not answer is
            # reported as such, not as a node that does not answer.
            await asyncio.wait_for(node.storage.ping(), READY_PING_TIMEOUT)
        except Exception as e:  # any failure of the storage means not ready
            return _error(503, f"storage unavailable: {type(e).__name__}", node=node.config.node_id,
                          reason=contract.STORAGE_UNAVAILABLE)
        return web.json_response({"status": "ready", "node": node.config.node_id})

    async def presentities(request: web.Request) -> web.Response:
        _known_params(request, {"event", "offset", "limit"})
        offset, limit = _paging(request)
        now = node.clock()
        rows = await node.storage.list_presentities(
            now, event=request.query.get("event"), offset=offset, limit=limit
        )
        return web.json_response(
            {
                "items": [
                    {
                        "presentity": p.presentity,
                        "event": p.event,
                        "etag": p.etag,
                        "content_type": p.content_type,
                        "expires_in": max(0, int(p.expires_at - now)),
                        "tag": p.tag,
                    }
                    for p in rows
                ],
                "offset": offset,
                "limit": limit,
            }
        )

    async def subscriptions(request: web.Request) -> web.Response:
        _known_params(request, {"presentity", "watcher", "event", "offset", "limit"})
        offset, limit = _paging(request)
        now = node.clock()
        q = request.query
        rows = await node.storage.list_subscriptions(
            now,
            presentity=q.get("presentity"),
            watcher=q.get("watcher"),
            event=q.get("event"),
            offset=offset,
            limit=limit,
        )
        return web.json_response(
            {
                "items": [
                    {
                        "id": s.id,
                        "presentity": s.presentity,
                        "watcher": s.watcher,
                        "event": s.event,
                        "status": s.status,
                        "expires_in": max(0, int(s.expires_at - now)),
                        "contact": s.contact,
                        "transport": s.transport,
                        "notify_cseq": s.cseq,
                        "tag": s.tag,
                    }
                    for s in rows
                ],
                "offset": offset,
                "limit": limit,
            }
        )

    async def registrations(request: web.Request) -> web.Response:
        _known_params(request, {"aor", "offset", "limit"})
        offset, limit = _paging(request)
        now = node.clock()
        rows = await node.storage.list_registrations(now, aor=request.query.get("aor"), offset=offset, limit=limit)
        return web.json_response(
            {
                "items": [
                    {
                        "aor": r.aor,
                        "contact": r.contact,
                        "expires_in": max(0, int(r.expires_at - now)),
                        "call_id": r.call_id,
                        "cseq": r.cseq,
                        "tag": r.tag,
                    }
                    for r in rows
                ],
                "offset": offset,
                "limit": limit,
            }
        )

    async def push(request: web.Request, asked: int | None, body: bytes, etag: str | None) -> web.Response:
        """Set (``asked`` None or > 0) or clear (0) a state as a PUBLISH
        would, and answer once its watchers are notified."""
        svc = node.service
        aor = request.match_info["aor"]
        try:
            presentity = svc.resource_of(aor if ":" in aor else f"sip:{aor}")
            key = request.match_info["event"]
            svc.publishable(key)
            ask = PublishAsk(
                presentity, key, etag, 0 if asked == 0 else svc.grant(asked, node.config.publication_expiry),
                body, media_type(request.headers.get("Content-Type")) if body else "",
                contract.PUSH_SOURCE, node.clock(), per_source=False,
            )
            reply = await publish(svc, ask)
        except RemoteSipError as e:
            return _refused(e)
        if reply.then is not None:
            await reply.then()
        got = dict(reply.headers)
        etag = got.get("SIP-ETag", etag)
        answer = {"presentity": presentity, "event": key, "etag": etag, "expires": int(got["Expires"])}
        return web.json_response(answer, headers={"ETag": f'"{etag}"'})

    async def set_state(request: web.Request) -> web.Response:
        _known_params(request, {"expires"})
        raw = request.query.get("expires")
        asked = None
        if raw is not None:
            if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS):
                raise _bad_request("expires must be a whole number of seconds")
            asked = int(raw)
            if asked == 0:
                raise _bad_request("expires must be at least 1: DELETE clears a state")
        return await push(request, asked, await request.read(), _if_match(request))

    async def clear_state(request: web.Request) -> web.Response:
        _known_params(request, set())
        etag = _if_match(request)
        if etag is None:
            raise _bad_request("If-Match must name the entity tag of the state to clear")
        return await push(request, 0, b"", etag)

    async def lists(request: web.Request) -> web.Response:
        _known_params(request, set())
        table = node.notifier.lists
        assert table is not None
        return web.json_response({"items": [{"list": aor, "members": list(members)} for aor, members in table.items()]})

    async def set_list(request: web.Request) -> web.Response:
        _known_params(request, set())
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'body must be JSON: {"members": ["sip:…", …]}')
        if not isinstance(body, dict) or set(body) != {"members"} or not isinstance(body["members"], list) \
                or not all(isinstance(m, str) for m in body["members"]):
            return _error(400, 'body must be {"members": [<SIP URI>, …]} and nothing else')
        table = node.notifier.lists
        assert table is not None
        try:
            before = table.get(canonical_list(request.match_info["uri"])) or ()
            aor, members = table.set(request.match_info["uri"], body["members"])
        except ListRefused as e:
            return _error(400, str(e))
        await node.notifier.list_redefined(aor)
        if node.federation is not None:
            await node.federation.list_redefined(aor, before)
        return web.json_response({"list": aor, "members": list(members)})

    async def delete_list(request: web.Request) -> web.Response:
        _known_params(request, set())
        table = node.notifier.lists
        assert table is not None
        try:
            aor = canonical_list(request.match_info["uri"])
        except ListRefused as e:
            return _error(400, str(e))
        before = table.get(aor) or ()
        if not table.delete(aor):
            return _error(404, f"no resource list {aor}")
        await node.notifier.list_redefined(aor)
        if node.federation is not None:
            await node.federation.list_redefined(aor, before)
        return web.json_response({"list": aor, "deleted": True})

    async def metrics(_: web.Request) -> web.Response:
        body = await node.metrics_text()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"node": node.config.node_id, "items": [_tag(t) for t in await node.tags.list()]})

    async def cluster(_: web.Request) -> web.Response:
        """Federation peers and every tag of the cluster with its owner."""
        own = [dict(_tag(t), node=node.config.node_id) for t in await node.tags.list()]
        if node.federation is None:
            return web.json_response({"node": node.config.node_id, "mode": "disabled", "peers": [], "tags": own})
        view = node.federation.view()
        mine = {t["tag"] for t in own}
        tags = own + [t for t in view["tags"] if t["tag"] not in mine]  # our database is authoritative
        return web.json_response(dict(view, node=node.config.node_id, tags=tags))

    async def activate(request: web.Request) -> web.Response:
        epoch: int | None = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "body must be JSON: {\"epoch\": N} or empty")
            if not isinstance(body, dict) or set(body) - {"epoch"}:
                return _error(400, "body may hold only \"epoch\"")
            epoch = body.get("epoch")
            if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1):
                return _error(400, "epoch must be a positive integer")
        return await _tag_call(lambda: node.tags.activate(request.match_info["tag"], epoch))

    async def deactivate(request: web.Request) -> web.Response:
        return await _tag_call(lambda: node.tags.deactivate(request.match_info["tag"]))

    def _subscriber_key(request: web.Request) -> tuple[str, str, str]:
        """(username, domain, realm) of the AOR in the path and ``realm``."""
        _known_params(request, {"realm"})
        aor = request.match_info["aor"].removeprefix("sip:")
        user, at, domain = aor.partition("@")
        if not (user and at and domain) or any(c.isspace() or c in "@:;<>\"" for c in user + domain):
            raise _bad_request("the path must name an AOR user@domain")
        domain = domain.lower()
        realm = request.query.get("realm") or node.config.auth.realms.get(domain, domain)
        return user, domain, realm

    def _database() -> None:
        if not node.storage.shared:
            raise web.HTTPConflict(
                text=json.dumps({"error": "no database: this node reads its users from auth.users_file"}),
                content_type="application/json",
            )

    async def list_subscribers(request: web.Request) -> web.Response:
        _known_params(request, {"offset", "limit"})
        offset, limit = _paging(request)
        _database()
        rows = await node.storage.list_subscribers(offset=offset, limit=limit)  # type: ignore[attr-defined]
        return web.json_response({"items": [r.as_json() for r in rows], "offset": offset, "limit": limit})

    async def get_subscriber(request: web.Request) -> web.Response:
        user, _, realm = _subscriber_key(request)
        _database()
        row = await node.storage.subscriber(user, realm)  # type: ignore[attr-defined]
        if row is None:
            return _error(404, f"no subscriber {user} in realm {realm}")
        return web.json_response(row.as_json())

    async def put_subscriber(request: web.Request) -> web.Response:
        """Only HA1 hashes are accepted: the password never reaches the node
        (``presence-node users add`` hashes it on the operator's side)."""
        user, domain, realm = _subscriber_key(request)
        _database()
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'body must be JSON: {"ha1_md5": "...", "ha1_sha256": "..."}')
        if not isinstance(body, dict) or set(body) != {"ha1_md5", "ha1_sha256"}:
            return _error(400, 'body must hold exactly "ha1_md5" and "ha1_sha256"')
        md5, sha256 = body["ha1_md5"], body["ha1_sha256"]
        for name, value, n in (("ha1_md5", md5, 32), ("ha1_sha256", sha256, 64)):
            if not isinstance(value, str) or len(value) != n or any(c not in "0123456789abcdefABCDEF" for c in value):
                return _error(400, f"{name} must be {n} hex digits")
        row = Subscriber(user, realm, f"{user}@{domain}", md5.lower(), sha256.lower())
        created = await node.storage.put_subscriber(row)  # type: ignore[attr-defined]
        return web.json_response(row.as_json(), status=201 if created else 200)

    async def delete_subscriber(request: web.Request) -> web.Response:
        user, _, realm = _subscriber_key(request)
        _database()
        if not await node.storage.delete_subscriber(user, realm):  # type: ignore[attr-defined]
            return _error(404, f"no subscriber {user} in realm {realm}")
        return web.Response(status=204)

    def _aor(text: str, what: str) -> str:
        user, at, domain = text.removeprefix("sip:").partition("@")
        if not (user and at and domain) or any(c.isspace() or c in "@:;<>\"" for c in user + domain):
            raise _bad_request(f"{what} must be an AOR user@domain")
        return f"{user}@{domain.lower()}"

    async def list_watcher_rules(request: web.Request) -> web.Response:
        _known_params(request, set())
        presentity = _aor(request.match_info["aor"], "the presentity")
        rules = await node.storage.watcher_rules(presentity)
        return web.json_response(
            {"presentity": presentity, "items": [{"watcher": w, "allow": a} for w, a in sorted(rules.items())]}
        )

    async def put_watcher_rule(request: web.Request) -> web.Response:
        """Allow or deny a watcher; a denial ends the watcher's live
        subscriptions to the presentity with terminated;reason=rejected
        (RFC 6665 §4.2.1.3), presence.winfo excepted (it is the
        presentity's own)."""
        _known_params(request, set())
        presentity = _aor(request.match_info["aor"], "the presentity")
        watcher = _aor(request.match_info["watcher"], "the watcher")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'body must be JSON: {"allow": true|false}')
        if not isinstance(body, dict) or set(body) != {"allow"} or not isinstance(body["allow"], bool):
            return _error(400, 'body must be {"allow": true} or {"allow": false}')
        await node.storage.set_watcher_rule(presentity, watcher, body["allow"])
        ended = 0
        if not body["allow"]:
            subs = await node.storage.list_subscriptions(
                node.clock(), presentity=presentity, watcher=watcher, event=None, offset=0, limit=contract.MAX_LIMIT
            )
            for sub in subs:
                if sub.event == "presence.winfo":
                    continue
                removed = await node.storage.delete_subscription(sub.id)
                if removed is not None:
                    await node.notifier.terminated(removed, "rejected")
                    ended += 1
        return web.json_response({"presentity": presentity, "watcher": watcher, "allow": body["allow"],
                                  "terminated": ended})

    async def delete_watcher_rule(request: web.Request) -> web.Response:
        _known_params(request, set())
        presentity = _aor(request.match_info["aor"], "the presentity")
        watcher = _aor(request.match_info["watcher"], "the watcher")
        if not await node.storage.set_watcher_rule(presentity, watcher, None):
            return _error(404, f"no rule for {watcher} on {presentity}")
        return web.Response(status=204)

    app.router.add_get(contract.WATCHER_RULES, list_watcher_rules)
    app.router.add_put(contract.WATCHER_RULE, put_watcher_rule)
    app.router.add_delete(contract.WATCHER_RULE, delete_watcher_rule)
    app.router.add_get(contract.SUBSCRIBERS, list_subscribers)
    app.router.add_get(contract.SUBSCRIBER, get_subscriber)
    app.router.add_put(contract.SUBSCRIBER, put_subscriber)
    app.router.add_delete(contract.SUBSCRIBER, delete_subscriber)
    app.router.add_get(contract.HEALTHZ, healthz)
    app.router.add_get(contract.READYZ, readyz)
    app.router.add_get(contract.PRESENTITIES, presentities)
    app.router.add_put(contract.PRESENTITY_STATE, set_state)
    app.router.add_delete(contract.PRESENTITY_STATE, clear_state)
    app.router.add_get(contract.LISTS, lists)
    app.router.add_put(contract.LIST, set_list)
    app.router.add_delete(contract.LIST, delete_list)
    app.router.add_get(contract.SUBSCRIPTIONS, subscriptions)
    app.router.add_get(contract.REGISTRATIONS, registrations)
    app.router.add_get(contract.METRICS, metrics)
    app.router.add_get(contract.TAGS, tags)
    app.router.add_get(contract.CLUSTER, cluster)
    app.router.add_post(contract.TAG_ACTIVATE, activate)
    app.router.add_post(contract.TAG_DEACTIVATE, deactivate)
    return app
