"""SIP messages: case-insensitive, multi-valued headers, and the serialiser.

Header names are stored in their canonical lower-case long form (compact forms
are expanded by the parser), so lookups are one dict access.  Each name maps
to the list of header *lines* in arrival order; :meth:`Headers.values` splits
comma-separated values for the headers whose grammar allows it.
"""

from __future__ import annotations

from typing import Iterable, Iterator

#: RFC 3261 §7.3.3 compact forms, plus RFC 3265/6665 ``o``/``u``.
COMPACT: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

#: How a canonical name is written when we serialise a message.
PRETTY: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "mime-version": "MIME-Version",
}


def pretty(name: str) -> str:
    p = PRETTY.get(name)
    if p is None:
        p = "-".join(part.capitalize() for part in name.split("-"))
        PRETTY[name] = p
    return p


def split_commas(value: str) -> list[str]:
    """Split a header line into its comma-separated values.

    Commas inside double quotes or angle brackets do not split (a display name
    or a URI may contain them).
    """
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    out: list[str] = []
    start = 0
    quote = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == "," and not angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


class Headers:
    """Header lines by canonical lower-case name, order kept per name."""

    __slots__ = ("_d",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._d: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        name = name.lower()
        name = COMPACT.get(name, name)
        lst = self._d.get(name)
        if lst is None:
            self._d[name] = [value]
        else:
            lst.append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first line of a header, or ``default``."""
        lst = self._d.get(name)
        return lst[0] if lst else default

    def lines(self, name: str) -> list[str]:
        return self._d.get(name, [])

    def values(self, name: str) -> list[str]:
        """Every comma-separated value of every line of ``name``, in order."""
        out: list[str] = []
        for line in self._d.get(name, ()):
            out.extend(split_commas(line))
        return out

    def __contains__(self, name: str) -> bool:
        return name in self._d

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for name, lst in self._d.items():
            for v in lst:
                yield name, v

    def set(self, name: str, value: str) -> None:
        self._d[name] = [value]

    def remove(self, name: str) -> None:
        self._d.pop(name, None)


class Request:
    __slots__ = ("method", "uri", "headers", "body")

    def __init__(self, method: str, uri: str, headers: Headers, body: bytes = b"") -> None:
        self.method = method
        self.uri = uri
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response:
    __slots__ = ("code", "reason", "headers", "body")

    def __init__(self, code: int, reason: str, headers: Headers, body: bytes = b"") -> None:
        self.code = code
        self.reason = reason
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.code} {self.reason}>"


Message = Request | Response


def serialise(start_line: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """Render a message; Content-Length is always written last, from ``body``.

    ``headers`` are (name, value) pairs written as given; any Content-Length
    among them is ignored so the framing can never disagree with the body.
    """
    return _serialise([start_line], headers, body)


def serialise_tail(headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """:func:`serialise` without the start line: what follows it (for a
    response, its own headers after those it copies: see response.Final)."""
    return _serialise([], headers, body)


def _serialise(parts: list[str], headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    for name, value in headers:
        if name.lower() in ("content-length", "l"):
            continue
        parts.append(f"{name}: {value}")
    parts.append(f"Content-Length: {len(body)}")
    parts.append("")
    parts.append("")
    return "\r\n".join(parts).encode() + body


def serialise_message(msg: Message) -> bytes:
    if isinstance(msg, Request):
        start = f"{msg.method} {msg.uri} SIP/2.0"
    else:
        start = f"SIP/2.0 {msg.code} {msg.reason}"
    return serialise(start, ((pretty(n), v) for n, v in msg.headers), msg.body)
