"""From received bytes to a sent response: validation, transactions, routing.

The order is RFC 3261 §8.2: framing and mandatory headers (400), server
transaction matching (S03), loose routing through ourselves (S07),
Max-Forwards (483), Require (420, S05), method (405 with Allow, S04), then
the handler.  Malformed input gets a 400 when a response can be formed and
is dropped otherwise (it needs a Via, From, To, Call-ID and CSeq to answer).
Nothing here changes stored state before the handler accepts the request.

A request that needs an unavailable storage gets 503 with Retry-After
(README §3, "Database loss"), and carries its deadline (arrival + 64*T1,
``storage.request_deadline``) into the storage, which refuses to apply it
once its client has given up.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable, Coroutine, Any

from ..sip.errors import ParseError, RemoteSipError
from ..sip.headers import parse_cseq, parse_name_addr, parse_uri, parse_via
from ..sip.message import Request, serialise
from ..sip.parser import parse, peek_response
from ..sip.quick import reject
from ..sip.response import Final, ResponseBuilder, final, stamp_via
from ..sip.status import Status, reason
from ..sip.transaction import MERGED, ServerTransactions
from ..storage.base import RequestExpired, StorageUnavailable, request_deadline
from ..tasks import Tasks
from . import eager
from .auth import AUTHENTICATED, Authenticator
from .context import Incoming, Service
from .limits import SourceLimiter
from .overload import OverloadControl
from .publish import handle_publish
from .register import handle_register
from .reply import Reply
from .subscribe import handle_subscribe

log = logging.getLogger(__name__)

ALLOW = "SUBSCRIBE, NOTIFY, PUBLISH, OPTIONS, REGISTER, CANCEL, ACK"
SUPPORTED: frozenset[str] = frozenset()  # no option tags beyond the base protocol

Handler = Callable[[Service, Incoming], Coroutine[Any, Any, Reply]]
HANDLERS: dict[str, Handler] = {
    "PUBLISH": handle_publish,
    "SUBSCRIBE": handle_subscribe,
    "REGISTER": handle_register,
}

Send = Callable[[bytes], None]


class DispatchMetrics:
    """What the dispatcher reports; the node wires it to Prometheus."""

    def request(self, method: str) -> None: ...

    def response(self, method: str, code: int) -> None: ...

    def latency(self, method: str, seconds: float) -> None: ...

    def dropped(self, why: str) -> None: ...

    def storage_refused(self, why: str) -> None:
        """A request answered 503 because the storage could not serve it
        (``unavailable``) or its client had given up (``expired``)."""

    def queue_delay(self, seconds: float) -> None: ...


class Dispatcher:
    def __init__(
        self,
        service: Service,
        metrics: DispatchMetrics,
        on_response: Callable[[int, str, str], None],
        *,
        local_hosts: set[str],
        clock: Callable[[], float] = time.time,
        auth: Authenticator | None = None,
    ) -> None:
        self.svc = service
        self.metrics = metrics
        self.on_response = on_response
        self.local_hosts = local_hosts
        self.clock = clock
        #: Digest and identity check (#15); None: auth.mode off.
        self.auth = auth
        cfg = service.config
        self.txns = ServerTransactions(cfg.notify.t1, cfg.limits.retained_response_bytes)
        #: 64*T1: a client's non-INVITE transaction times out (Timer F) by then.
        self.txn_timeout = 64 * cfg.notify.t1
        self.limiter = SourceLimiter(cfg.limits.per_source_rate, cfg.limits.per_source_burst)
        self.max_size = cfg.limits.max_message_size
        self.max_header = cfg.limits.max_header_bytes
        self.max_vias = cfg.limits.max_vias
        self.max_in_progress = cfg.limits.max_in_progress
        self.in_progress = 0
        self.overload = OverloadControl(cfg.limits.overload_target, cfg.limits.overload_interval)
        self.retry_after = str(cfg.limits.overload_retry_after)
        self._retry_after_line = f"Retry-After: {self.retry_after}\r\n".encode()
        #: A request older than this has outlived its client transaction
        #: (Timer F, 64*T1, taking the client's T1 to be ours): its client
        #: has given up, so serving it would apply what it thinks failed.
        self.max_age = 64 * cfg.notify.t1
        #: Set on SIGTERM: new requests get 503 while NOTIFYs in flight finish.
        self.draining = False
        self._tasks = Tasks("dispatch")

    def receive(
        self, data: bytes, host: str, port: int, transport: str, send: Send, arrived: float | None = None
    ) -> None:
        """Handle one datagram or one framed stream message, received by the
        kernel at ``arrived`` (time.time(); None: now)."""
        if data[:1] in (b"\r", b"\n"):
            data = data.lstrip(b"\r\n")  # keep-alive CRLFs (RFC 5626 §4.4.1)
            if not data:
                return
        if data[:4] == b"SIP/":
            peeked = peek_response(data)
            if peeked is not None:
                self.on_response(*peeked, host)
            else:
                self.metrics.dropped("malformed")
            return
        now = self.clock()
        # The kernel stamps arrival on the system clock, which the node's
        # clock (a test moves it) need not follow.
        waited = max(0.0, time.time() - arrived) if arrived is not None else 0.0
        if waited > self.max_age:
            self.metrics.dropped("too-old")
            return
        if not self.limiter.allow(host, now):
            # Over its budget: dropped before any parsing, so a flooding
            # source costs us as little as possible and others keep service.
            self.metrics.dropped("rate-limit")
            return
        delay = waited + self.svc.storage.queue_delay()
        self.metrics.queue_delay(delay)
        admitted = self.overload.admit(delay, now)
        if not admitted:
            quick = reject(data, host, port, b"503 Service Unavailable", self._retry_after_line, self.svc.ids.tag())
            if quick is not None:  # else the parser's turn, and the 503 below
                method, key, answer = quick
                if method == "ACK" or self._shed(method, key, answer, send):
                    self.metrics.request(method)
                    return
                # A retransmission of an answered request: the parser's turn
                # too (the stored answer takes the request's own headers).
        self.txns.sweep(now)
        try:
            msg = parse(
                # A WebSocket message delimits one SIP message as a datagram does.
                data, datagram=transport in ("udp", "ws", "wss"), max_size=self.max_size, max_header=self.max_header,
                max_vias=self.max_vias,
            )
        except ParseError as e:
            self.metrics.dropped("too-large" if e.status_hint == 513 else "malformed")
            answer = salvage(data, e, host, port, self.svc.ids.tag())
            if answer is not None:
                send(answer)
            return
        if not isinstance(msg, Request):
            return  # a status line not at the start: not a response we sent for
        req = msg
        method = req.method
        self.metrics.request(method)
        try:
            rb = ResponseBuilder(req, host, port)
            via = parse_via(rb.vias[0])
        except ParseError:
            self.metrics.dropped("no-via")
            return  # nowhere to send an answer
        if method == "ACK":
            return  # ACKs to our non-2xx final responses: nothing to do
        if not admitted:
            key = ServerTransactions.key(via.branch, via.sent_by, method, _fallback_key(req))
            self._shed(method, key, rb.build(503, [("Retry-After", self.retry_after)], to_tag=self.svc.ids.tag()), send, rb)
            return
        missing = [h for h in ("from", "to", "call-id", "cseq") if h not in req.headers]
        bad: str | None = f"missing {', '.join(missing)}" if missing else None
        if bad is None:
            try:
                cseq, cseq_method = parse_cseq(req.headers.get("cseq") or "")
                frm = parse_name_addr(req.headers.get("from") or "")
                to = parse_name_addr(req.headers.get("to") or "")
                if cseq_method != method:
                    bad = "CSeq method does not match the request"
            except ParseError as e:
                bad = e.reason
        if bad is not None:
            self._send(send, method, rb.build(400, to_tag=self.svc.ids.tag(), phrase=f"Bad Request ({bad})"[:120]))
            return
        key = ServerTransactions.key(
            via.branch, via.sent_by, "INVITE" if method == "ACK" else method, _fallback_key(req)
        )
        if method == "CANCEL":
            self._cancel(req, via, rb, send)
            return
        # Out of dialog (no To tag): remember where it came from, to tell a
        # merged copy (another branch of a forked request) from a new one.
        origin = (
            ServerTransactions.origin(frm.tag, req.headers.get("call-id") or "", cseq, method)
            if frm.tag and not to.tag
            else None
        )
        stored = self.txns.begin(key, origin)
        if stored is MERGED:
            # RFC 3261 §8.2.2.2: this request already reached us by another path.
            self.metrics.dropped("merged")
            self._send(send, method, rb.build(482, to_tag=self.svc.ids.tag()))
            return
        if stored is not None:
            self.metrics.dropped("retransmission")
            if isinstance(stored, Final):
                send(rb.render(stored))
            return
        if self.draining or self.in_progress >= self.max_in_progress:
            self.txns.abandon(key)
            self.metrics.dropped("overload")
            self._send(send, method, rb.build(503, [("Retry-After", self.retry_after)], to_tag=self.svc.ids.tag()))
            return
        pre = self._precheck(req)
        if pre is not None:
            self._finish(key, send, method, rb, pre, transport, now)
            return
        handler = HANDLERS.get(method)
        if handler is None:
            self._finish(key, send, method, rb, self._simple(req), transport, now)
            return
        inc = Incoming(req, host, port, transport, now, frm, to, cseq)
        self.in_progress += 1
        # The handler's part runs now (eagerly) and in the Task it may
        # become, which copies this context: both see the deadline.
        token = request_deadline.set(now + self.txn_timeout)
        try:
            task = eager.start(self._run(handler, inc, key, send, rb, transport))
        finally:
            request_deadline.reset(token)
        if task is not None:
            self._tasks.add(task)

    async def _run(
        self, handler: Handler, inc: Incoming, key: str, send: Send, rb: ResponseBuilder, transport: str
    ) -> None:
        t0 = time.perf_counter()
        try:
            phrase = None
            try:
                refused = None
                if self.auth is not None and inc.request.method in AUTHENTICATED:
                    refused = await self.auth.check(inc.request, inc.host, inc.from_, inc.to, inc.now)
                if refused is not None:
                    reply, phrase = refused.reply, refused.phrase
                else:
                    reply = await handler(self.svc, inc)
            except RemoteSipError as e:
                reply = Reply(e.status_hint, list(e.headers), to_tag=self.svc.ids.tag())
                phrase = f"{reason(e.status_hint)} ({e.reason})" if e.reason else None
                self._finish(key, send, inc.request.method, rb, reply, transport, inc.now, phrase)
                return
            except StorageUnavailable as e:
                why = "expired" if isinstance(e, RequestExpired) else "unavailable"
                self.metrics.storage_refused(why)
                log.warning("storage unavailable", extra={"method": inc.request.method, "error": str(e)})
                reply = Reply(503, [("Retry-After", self.retry_after)], to_tag=self.svc.ids.tag())
                phrase = "Service Unavailable (storage unavailable)"
                self._finish(key, send, inc.request.method, rb, reply, transport, inc.now, phrase)
                return
            except Exception:
                log.exception("handler failed", extra={"method": inc.request.method})
                reply = Reply(500, to_tag=self.svc.ids.tag())
            self._finish(key, send, inc.request.method, rb, reply, transport, inc.now, phrase)
            if reply.then is not None:
                request_deadline.set(None)  # answered: what follows is the node's own work
                try:
                    await reply.then()
                except Exception:
                    log.exception("post-response work failed", extra={"method": inc.request.method})
        finally:
            self.in_progress -= 1
            self.metrics.latency(inc.request.method, time.perf_counter() - t0)

    def _finish(
        self,
        key: str,
        send: Send,
        method: str,
        rb: ResponseBuilder,
        reply: Reply,
        transport: str,
        now: float,
        phrase: str | None = None,
    ) -> None:
        response = final(reply.code, reply.headers, reply.body, to_tag=reply.to_tag or self.svc.ids.tag(), phrase=phrase)
        # The table keeps only our part: a retransmission brings the rest.
        self.txns.complete(key, response, now, reliable=transport != "udp", size=response.size)
        self._send(send, method, rb.render(response), reply.code)

    def _shed(self, method: str, key: str, answer: bytes, send: Send, rb: ResponseBuilder | None = None) -> bool:
        """Overloaded: ``answer`` (a 503) before any validation, state or
        handler.  A retransmission of a request in progress is dropped (its
        answer is coming), of one answered gets that answer again, which
        needs the request parsed (``rb``): without it, False (not handled)."""
        stored = self.txns.get(key)
        if isinstance(stored, Final):
            if rb is None:
                return False
            self.metrics.dropped("retransmission")
            send(rb.render(stored))
            return True
        if stored is not None:
            self.metrics.dropped("retransmission")
            return True
        self.metrics.dropped("overload-queue")
        self._send(send, method, answer, 503)
        return True

    def _send(self, send: Send, method: str, data: bytes, code: int | None = None) -> None:
        if code is None:
            code = int(data[8:11])
        self.metrics.response(method, code)
        send(data)

    def _precheck(self, req: Any) -> Reply | None:
        """Checks every request goes through before its handler."""
        h = req.headers
        # S07: a pre-loaded Route naming us is consumed (loose routing).
        routes = h.values("route")
        if routes:
            remaining = [r for r in routes if not self._is_us(r)]
            if remaining:
                h.set("route", ", ".join(remaining))
            else:
                h.remove("route")
        mf = h.get("max-forwards")
        if mf is not None:
            if not (mf.isascii() and mf.strip().isdigit()) or len(mf) > 10:  # int() of >4300 digits raises
                return Reply(Status.BAD_REQUEST)
            if int(mf) == 0 and req.method != "OPTIONS":
                return Reply(Status.TOO_MANY_HOPS)
        required = [r.lower() for r in h.values("require")]
        unsupported = [r for r in required if r not in SUPPORTED]
        if unsupported and req.method not in ("CANCEL", "ACK"):
            return Reply(Status.BAD_EXTENSION, [("Unsupported", ", ".join(unsupported))])
        return None

    def _is_us(self, route: str) -> bool:
        try:
            uri = parse_uri(parse_name_addr(route).uri)
        except ParseError:
            return False
        return uri.host in self.local_hosts and (uri.port in (None, self.svc.sip_port))

    def _simple(self, req: Any) -> Reply:
        method = req.method
        if method == "OPTIONS":
            return Reply(
                Status.OK,
                [
                    ("Allow", ALLOW),
                    ("Allow-Events", self.svc.allow_events),
                    ("Accept", "application/pidf+xml, application/dialog-info+xml, application/watcherinfo+xml"),
                ],
            )
        if method == "NOTIFY":
            # The node subscribes to nobody (D9): no dialog can match.
            return Reply(Status.CALL_DOES_NOT_EXIST)
        return Reply(Status.METHOD_NOT_ALLOWED, [("Allow", ALLOW)])

    def _cancel(self, req: Any, via: Any, rb: ResponseBuilder, send: Send) -> None:
        """S12: answer a CANCEL; a non-INVITE transaction is not affected."""
        matched = any(
            self.txns.exists(ServerTransactions.key(via.branch, via.sent_by, m, _fallback_key(req)))
            for m in ("SUBSCRIBE", "PUBLISH", "NOTIFY", "OPTIONS", "REGISTER")
        )
        self._send(send, "CANCEL", rb.build(200 if matched else 481, to_tag=self.svc.ids.tag()))

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the requests being handled: graceful shutdown."""
        await self._tasks.drain(timeout)


def _fallback_key(req: Any) -> str:
    """RFC 2543 matching for requests without a magic-cookie branch."""
    h = req.headers
    return "\x00".join((req.uri, h.get("call-id") or "", h.get("cseq") or "", h.get("from") or ""))


_SALVAGE = re.compile(rb"(?im)^(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*([^\r\n]*)\r?$")
_LONG = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}


def salvage(data: bytes, err: ParseError, host: str, port: int, to_tag: str = "") -> bytes | None:
    """A 400 for a request we could not parse, if it names enough to answer
    (with ``to_tag`` added to a To without one: S01)."""
    if data.startswith(b"SIP/"):
        return None  # never answer a response
    found: dict[bytes, list[str]] = {}
    for m in _SALVAGE.finditer(data[:8192]):
        name = m.group(1).lower()
        name = _LONG.get(name, name)
        try:
            value = m.group(2).decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        if "\x00" in value:
            return None  # echoing it would make our answer unparsable too
        found.setdefault(name, []).append(value)
    if not all(k in found for k in (b"via", b"from", b"to", b"call-id", b"cseq")):
        return None
    try:
        parse_via(found[b"via"][0].split(",")[0])
    except ParseError:
        return None
    vias = [v.strip() for line in found[b"via"] for v in line.split(",") if v.strip()]
    vias[0] = stamp_via(vias[0], host, port)
    headers = [("Via", v) for v in vias]
    to = found[b"to"][0]
    if to_tag and ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={to_tag}"
    headers += [("From", found[b"from"][0]), ("To", to)]
    headers += [("Call-ID", found[b"call-id"][0]), ("CSeq", found[b"cseq"][0])]
    phrase = f"Bad Request ({err.reason})"[:120].replace("\r", " ").replace("\n", " ")
    code = err.status_hint if err.status_hint in (400, 413, 505, 513) else 400
    if code == 513:
        phrase = f"{reason(code)} ({err.reason})"
    elif code != 400:
        phrase = reason(code)
    return serialise(f"SIP/2.0 {code} {phrase}", headers)
