"""HTTP Digest for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans I/O.

Only ``qop=auth`` is offered and accepted: without a qop there is no nonce
count, and so no way to tell a replayed request from a new one.  SHA-256 is
offered first (RFC 8760 §2.4: a client takes the first algorithm it
supports) and MD5 second, for the phones that know nothing else.

Nonces are stateless: ``<issued ms>.<random>.<HMAC>`` signed with a secret
the nodes of a cluster share, so any node can check a nonce another issued
without asking it, and nothing is held for a nonce until a request using it
has been authenticated (then its highest nonce count, elsewhere).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import NamedTuple

from .errors import ParseError

ALGORITHMS = ("SHA-256", "MD5")
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}

#: One ``name=value`` or ``name="quoted value"`` of a credentials list.
_PARAM = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")
_NC = re.compile(r"^[0-9A-Fa-f]{8}$")


def h(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode("utf-8")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """What is stored for a user instead of the password (RFC 7616 §3.4.2)."""
    return h(algorithm, f"{username}:{realm}:{password}")


def response(algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str, qop: str, method: str, uri: str) -> str:
    """The request-digest (RFC 7616 §3.4.1, qop=auth)."""
    ha2 = h(algorithm, f"{method}:{uri}")
    return h(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class Credentials(NamedTuple):
    """An Authorization or Proxy-Authorization header value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None

    @property
    def nonce_count(self) -> int:
        """The nonce count as a number (``nc`` is 8 hex digits)."""
        return int(self.nc or "0", 16)


def parse_credentials(value: str) -> Credentials:
    """Parse ``Digest name=value, ...``; ParseError for anything else
    (another scheme, a missing or repeated parameter, an unknown algorithm,
    a qop other than auth, a malformed nc)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ParseError("not Digest credentials")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise ParseError("malformed Digest credentials")
        name = m.group(1).lower()
        if name in params:
            raise ParseError(f"repeated Digest parameter {name}")
        quoted = m.group(2)
        if quoted is None:
            params[name] = m.group(3)
        else:
            params[name] = _UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
        pos = m.end()
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
    if missing:
        raise ParseError(f"Digest credentials without {', '.join(missing)}")
    algorithm = params.get("algorithm", "MD5")
    canonical = next((a for a in ALGORITHMS if a.lower() == algorithm.lower()), None)
    if canonical is None:
        raise ParseError(f"unsupported Digest algorithm {algorithm}")
    qop = params.get("qop")
    if qop is not None and qop.lower() != "auth":
        raise ParseError(f"unsupported qop {qop}")
    nc = params.get("nc")
    if qop is not None and (nc is None or not _NC.match(nc) or "cnonce" not in params):
        raise ParseError("qop=auth needs nc (8 hex digits) and cnonce")
    return Credentials(
        params["username"], params["realm"], params["nonce"], params["uri"], params["response"].lower(),
        canonical, qop.lower() if qop else None, nc, params.get("cnonce"),
    )


def challenge(realm: str, nonce: str, algorithm: str, *, stale: bool = False) -> str:
    """A WWW-Authenticate or Proxy-Authenticate value."""
    quoted = realm.replace("\\", "\\\\").replace('"', '\\"')
    value = f'Digest realm="{quoted}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
    return value + ", stale=true" if stale else value


def make_nonce(secret: bytes, issued: float, random_hex: str) -> str:
    """A nonce any holder of ``secret`` can verify and date."""
    body = f"{int(issued * 1000):x}.{random_hex}"
    return f"{body}.{_mac(secret, body)}"


def nonce_issued(secret: bytes, nonce: str) -> float | None:
    """When ``nonce`` was issued (seconds), or None if we did not sign it."""
    body, _, mac = nonce.rpartition(".")
    if not body or not hmac.compare_digest(mac, _mac(secret, body)):
        return None
    try:
        return int(body.partition(".")[0], 16) / 1000
    except ValueError:
        return None


def _mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:32]
