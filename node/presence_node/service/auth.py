"""Who may publish, subscribe and register (#15): digest authentication
and the identity check, before any package handler runs.

A request from a trusted source (the deployment's own proxies, which
authenticated the user already) goes through.  Any other PUBLISH,
SUBSCRIBE or REGISTER must carry digest credentials for a user of the
realm of its domain (401/407 with a challenge otherwise), computed over a
nonce this cluster signed that is not older than ``auth.nonce_lifetime``
and with a nonce count above any seen for it (401 stale=true otherwise, so
the client retries at once with a fresh nonce).  The user must then be who
the request speaks for (403 otherwise), as in Kamailio's default
configuration: the From of a SUBSCRIBE; the From, To and Request-URI of a
PUBLISH; the To of a REGISTER.

Failed attempts (a wrong password, an unknown user, a nonce we never
signed) spend a per-source budget; a source that spent it gets 403 until
it refills, without its credentials being looked at.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from ..config import Auth
from ..sip import digest
from ..sip.errors import ParseError
from ..sip.headers import NameAddr, parse_uri
from ..sip.message import Request
from ..storage.subscribers import Subscriber
from .limits import SourceLimiter
from .reply import Reply

log = logging.getLogger(__name__)

AUTH_SECRET_ENV = "PRESENCE_AUTH_SECRET"
#: Methods that need an authenticated user; OPTIONS, CANCEL, ACK and the
#: NOTIFYs no dialog matches go through as before.
AUTHENTICATED = frozenset({"PUBLISH", "SUBSCRIBE", "REGISTER"})


class AuthConfigError(Exception):
    """The users file cannot be used (the message names the line)."""


Users = dict[tuple[str, str], Subscriber]  # (username, realm) -> user
#: Finds a user by digest username and realm: the users file's table, or
#: the shared database's subscribers.
Lookup = Callable[[str, str], Awaitable[Subscriber | None]]
#: The per-presentity rule for a watcher (Storage.watcher_rule).
Rules = Callable[[str, str], Awaitable[bool | None]]


def file_lookup(users: Users) -> Lookup:
    async def lookup(username: str, realm: str) -> Subscriber | None:
        return users.get((username, realm))

    return lookup


def load_users(path: Path) -> Users:
    """``AOR REALM HA1-MD5 HA1-SHA256`` per line; # comments and blank
    lines skipped.  The digest username is the AOR's user part."""
    try:
        text = path.read_text()
    except OSError as e:
        raise AuthConfigError(f"cannot read auth.users_file {path}: {e.strerror}") from e
    users: Users = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or fields[0].count("@") != 1:
            raise AuthConfigError(f"{path}:{n}: expected 'user@domain realm ha1-md5 ha1-sha256'")
        aor, realm, md5, sha256 = fields
        if len(md5) != 32 or len(sha256) != 64 or not _hex(md5 + sha256):
            raise AuthConfigError(f"{path}:{n}: the HA1 fields must be 32 and 64 hex digits")
        user, _, domain = aor.removeprefix("sip:").partition("@")
        users[(user, realm)] = Subscriber(user, realm, f"{user}@{domain.lower()}", md5.lower(), sha256.lower())
    return users


def _hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def user_line(aor: str, realm: str, password: str) -> str:
    """The users file line for ``aor`` (what the CLI prints)."""
    user = aor.removeprefix("sip:").partition("@")[0]
    md5, sha256 = (digest.ha1(alg, user, realm, password) for alg in ("MD5", "SHA-256"))
    return f"{aor.removeprefix('sip:')} {realm} {md5} {sha256}"


class AuthMetrics(Protocol):
    def count(self, name: str, label: str, n: int = 1) -> None: ...


class NonceCounts:
    """The highest nonce count seen per nonce, for nonces of requests that
    authenticated.  Bounded: past ``limit`` the first-used is forgotten,
    and every nonce issued no later than it is refused from then on (it
    could otherwise be replayed), which costs its client one stale retry."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.floor = 0.0

    def __len__(self) -> int:
        return len(self._seen)

    def fresh(self, nonce: str, issued: float, count: int) -> bool:
        """Whether ``count`` is new for ``nonce`` (no side effect)."""
        seen = self._seen.get(nonce)
        if seen is None:
            return issued > self.floor
        return count > seen[0]

    def record(self, nonce: str, issued: float, count: int, expired_before: float) -> None:
        self._seen[nonce] = (count, issued)
        seen = self._seen
        while seen:
            _, (_, first_issued) = next(iter(seen.items()))
            if len(seen) <= self.limit and first_issued >= expired_before:
                break
            seen.popitem(last=False)
            if first_issued >= expired_before:
                self.floor = max(self.floor, first_issued)


@dataclass(slots=True)
class Refusal:
    reply: Reply
    phrase: str | None = None


class Authenticator:
    def __init__(self, cfg: Auth, lookup: Lookup, secret: bytes, metrics: AuthMetrics, rules: Rules) -> None:
        self.cfg = cfg
        self.lookup = lookup
        self.rules = rules
        self.secret = secret
        self.metrics = metrics
        self.proxy = cfg.mode == "proxy"
        self._ask = "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"
        self._header = "proxy-authorization" if self.proxy else "authorization"
        self._code = 407 if self.proxy else 401
        self.trusted = [ipaddress.ip_network(s, strict=False) for s in cfg.trusted_sources]
        self.counts = NonceCounts(cfg.max_tracked_nonces)
        self.failures = SourceLimiter(cfg.failure_rate, cfg.failure_burst)

    async def check(self, req: Request, host: str, frm: NameAddr, to: NameAddr, now: float) -> Refusal | None:
        """None if ``req`` may go on to its handler, else how to answer it."""
        if self.trusted and self._trusted(host):
            self.metrics.count("sip_auth_results", "trusted")
            return None
        if self.failures.exhausted(host, now):
            return self._refuse("rate-limited", Reply(403), "Forbidden (too many failed authentications)")
        try:
            claimed = parse_uri((to if req.method == "REGISTER" else frm).uri)
        except ParseError:
            return self._refuse("malformed", Reply(400), "Bad Request (From or To is not a SIP URI)")
        realm = self.cfg.realms.get(claimed.host.lower(), claimed.host.lower())
        creds = self._credentials(req, realm)
        if isinstance(creds, Refusal):
            return creds
        if creds is None:
            return self._challenge("challenged", realm, now)
        user = await self.lookup(creds.username, realm)
        if user is None:
            return self._failed(host, realm, now, "unknown user")
        ha1 = user.ha1_sha256 if creds.algorithm == "SHA-256" else user.ha1_md5
        expected = digest.response(
            creds.algorithm, ha1, creds.nonce, creds.nc or "", creds.cnonce or "", creds.qop or "", req.method, creds.uri
        )
        if not hmac.compare_digest(expected, creds.response):
            return self._failed(host, realm, now, "wrong credentials")
        issued = digest.nonce_issued(self.secret, creds.nonce)
        if issued is None or not now - self.cfg.nonce_lifetime <= issued <= now + 1:
            return self._challenge("stale", realm, now, stale=True)
        if not self.counts.fresh(creds.nonce, issued, creds.nonce_count):
            return self._challenge("replayed", realm, now, stale=True)
        self.counts.record(creds.nonce, issued, creds.nonce_count, now - self.cfg.nonce_lifetime)
        if not self._speaks_for(user.aor, req, frm, to):
            return self._refuse("forbidden", Reply(403), f"Forbidden ({user.aor} may not act for this identity)")
        if req.method == "SUBSCRIBE" and not await self._may_watch(user.aor, req):
            return self._refuse("forbidden", Reply(403), f"Forbidden ({user.aor} may not watch this presentity)")
        self.metrics.count("sip_auth_results", "ok")
        return None

    async def _may_watch(self, watcher: str, req: Request) -> bool:
        """The presentity's rule for this watcher, else ``auth.watchers``
        (#15.3); presence.winfo is left to its handler (D4)."""
        policy = self.cfg.watchers
        event = (req.headers.get("event") or "").partition(";")[0].strip().lower()
        if event == "presence.winfo":
            return True
        try:
            target = parse_uri(req.uri)
        except ParseError:
            return True  # the handler answers a bad Request-URI
        domain = target.host.lower()
        rule = await self.rules(f"{target.user}@{domain}", watcher)
        if rule is not None:
            return rule
        if policy == "everyone":
            return True
        if policy == "domain":
            return watcher.rpartition("@")[2] == domain
        return await self.lookup(target.user, self.cfg.realms.get(domain, domain)) is not None

    def _credentials(self, req: Request, realm: str) -> digest.Credentials | Refusal | None:
        """The request's credentials for ``realm`` (a client may carry some
        for other realms too), None if it has none."""
        for value in req.headers.lines(self._header):
            try:
                creds = digest.parse_credentials(value)
            except ParseError as e:
                return self._refuse("malformed", Reply(400), f"Bad Request ({e.reason})")
            if creds.realm == realm and creds.algorithm in self.cfg.algorithms:
                if creds.qop is None:  # RFC 2069 digest: no nonce count, so no replay protection
                    return self._refuse("malformed", Reply(400), "Bad Request (Digest without qop=auth)")
                return creds
        return None

    def _speaks_for(self, aor: str, req: Request, frm: NameAddr, to: NameAddr) -> bool:
        if req.method == "REGISTER":
            names = [to.uri]
        elif req.method == "PUBLISH":
            names = [frm.uri, to.uri, req.uri]
        else:
            names = [frm.uri]
        for name in names:
            try:
                if parse_uri(name).aor.lower() != aor.lower():
                    return False
            except ParseError:
                return False
        return True

    def _trusted(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def _failed(self, host: str, realm: str, now: float, why: str) -> Refusal:
        self.failures.allow(host, now)  # spends one of the source's tokens
        log.info("authentication failed", extra={"source": host, "realm": realm, "reason": why})
        return self._challenge("failed", realm, now)

    def _challenge(self, result: str, realm: str, now: float, *, stale: bool = False) -> Refusal:
        nonce = digest.make_nonce(self.secret, now, secrets.token_hex(8))
        headers = [(self._ask, digest.challenge(realm, nonce, alg, stale=stale)) for alg in self.cfg.algorithms]
        return self._refuse(result, Reply(self._code, headers))

    def _refuse(self, result: str, reply: Reply, phrase: str | None = None) -> Refusal:
        self.metrics.count("sip_auth_results", result)
        return Refusal(reply, phrase)


def nonce_secret(path: Path | None, shared: bool) -> bytes:
    """The key nonces are signed with: from the file or environment, else
    random for this process (a node whose nonces no other node checks)."""
    from ..admin.secret import read_secret

    value = read_secret(path, AUTH_SECRET_ENV, "auth nonce secret")
    if value is not None:
        return value.encode()
    if shared:
        log.warning(
            "no auth.nonce_secret_file or %s: nonces are signed with a key of this process, so another node"
            " of the cluster finds them stale (one more round trip per request)", AUTH_SECRET_ENV,
        )
    return secrets.token_bytes(32)
