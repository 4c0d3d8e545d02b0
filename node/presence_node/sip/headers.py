"""Parsers for the structured header values the node reads.

Each takes a string and returns a small frozen value or raises
:class:`ParseError`.  They are deliberately narrow: the node reads only what
it needs (URIs and their AOR, tags, Via sent-by and parameters, CSeq, Event,
Expires) and passes everything else through untouched.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from .errors import ParseError


def parse_params(text: str) -> dict[str, str | None]:
    """``;a=1;b;c="x"`` → ``{"a": "1", "b": None, "c": "x"}`` (names lower-cased)."""
    out: dict[str, str | None] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            k, v = item.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                v = v[1:-1]
            out[k.strip().lower()] = v
        else:
            out[item.lower()] = None
    return out


class SipUri(NamedTuple):
    scheme: str
    user: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def aor(self) -> str:
        """The canonical AOR ``user@domain`` (D2): no scheme, port or params."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


_URI = re.compile(
    r"^(?P<scheme>sips?|tel|pres):(?:(?P<user>[^@;?]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:;?>]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>;[^?]*)?(?:\?.*)?$",
    re.IGNORECASE,
)


@lru_cache(maxsize=8192)
def parse_uri(text: str) -> SipUri:
    """Parse a SIP URI.  Cached: one request reads the same URIs several
    times (Request-URI, Contact) and watchers and presentities repeat; the
    result is immutable by convention (its params dict is never changed)."""
    m = _URI.match(text.strip())
    if m is None:
        raise ParseError(f"bad URI {text[:60]!r}")
    user = m.group("user") or ""
    if ":" in user:  # user:password
        user = user.split(":", 1)[0]
    port = m.group("port")
    p = int(port) if port else None
    if p is not None and not 0 < p < 65536:
        raise ParseError("bad port in URI")
    params = parse_params(m.group("params")[1:]) if m.group("params") else {}
    host = m.group("host").lower()
    if not host:
        raise ParseError("URI without host")
    return SipUri(m.group("scheme").lower(), user, host, p, params)


class NameAddr(NamedTuple):
    """A From, To, Contact, Route or Record-Route value."""

    display: str
    uri: str
    params: dict[str, str | None]

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise ParseError("unterminated <URI>")
        display = text[:lt].strip().strip('"')
        uri = text[lt + 1 : gt].strip()
        rest = text[gt + 1 :]
    else:
        # addr-spec: URI params end at the first ';' (header params follow).
        semi = text.find(";")
        display = ""
        if semi >= 0:
            uri, rest = text[:semi], text[semi:]
        else:
            uri, rest = text, ""
    if not uri or ":" not in uri:
        raise ParseError(f"bad address {text[:60]!r}")
    return NameAddr(display, uri, parse_params(rest))


class Via(NamedTuple):
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host


_VIA = re.compile(
    r"^SIP\s*/\s*2\.0\s*/\s*(?P<transport>[A-Za-z]+)\s+(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:;]+)"
    r"(?:\s*:\s*(?P<port>\d{1,5}))?\s*(?P<params>;.*)?$",
    re.IGNORECASE,
)


def parse_via(text: str) -> Via:
    m = _VIA.match(text.strip())
    if m is None:
        raise ParseError(f"bad Via {text[:60]!r}")
    port = m.group("port")
    params = parse_params(m.group("params")[1:]) if m.group("params") else {}
    return Via(m.group("transport").upper(), m.group("host"), int(port) if port else None, params)


def parse_cseq(text: str) -> tuple[int, str]:
    parts = text.split()
    if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()) or len(parts[0]) > 10:
        raise ParseError("bad CSeq")
    n = int(parts[0])
    if n >= 2**31:
        raise ParseError("CSeq out of range")
    return n, parts[1]


class Event(NamedTuple):
    """An Event header: package token and parameters (RFC 6665 §8.2.1)."""

    package: str
    params: dict[str, str | None]
    raw: str

    @property
    def id(self) -> str | None:
        return self.params.get("id")

    @property
    def key(self) -> str:
        """The name the node serves it under: ``dialog;sla`` is its own key."""
        if self.package == "dialog" and "sla" in self.params:
            return "dialog;sla"
        return self.package


_EVENT_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


def parse_event(text: str) -> Event:
    raw = text.strip()
    head, _, rest = raw.partition(";")
    package = head.strip()
    if not package or not _EVENT_TOKEN.match(package):
        raise ParseError("bad Event")
    return Event(package, parse_params(rest), raw)


def parse_expires(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or len(t) > 10:
        raise ParseError("bad Expires")
    return min(int(t), 2**32 - 1)


def media_type(text: str | None) -> str:
    """``Application/PIDF+XML; charset=x`` → ``application/pidf+xml``."""
    if not text:
        return ""
    return text.split(";", 1)[0].strip().lower()
