"""Bytes to :class:`Request`/:class:`Response` (RFC 3261 §7, §18.3).

Lenient where interop demands it (bare LF line ends, a UDP datagram without
Content-Length: S06) and strict where safety does (sizes, UTF-8 headers, a
Content-Length that disagrees with the datagram).  A header section or a
Via list over its cap is a 513 (RFC 3261 §21.5.14 Message Too Large): what
a request costs to parse and answer grows with them.  Every failure is a
:class:`ParseError`; nothing else escapes for any input (a Hypothesis test
feeds it arbitrary bytes).
"""

from __future__ import annotations

import re

from .errors import ParseError
from .message import COMPACT, Headers, Request, Response

_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_FOLD = re.compile(r"\r?\n[ \t]+")

#: Largest message we take (UDP datagrams are capped by the transport anyway).
DEFAULT_MAX_SIZE = 65535
#: Longest header section, and most Via values (the Max-Forwards a UAC
#: starts with: an honest request has not been through more proxies).
DEFAULT_MAX_HEADER = 16384
DEFAULT_MAX_VIAS = 70


#: Raw header names seen before → canonical name (bounded: names are
#: attacker-chosen, so only the first few thousand distinct ones are cached).
_NAMES: dict[str, str] = {}
_NAMES_MAX = 2048


def _canonical(raw: str) -> str:
    name = raw.strip().lower()
    if not _HEADER_NAME.match(name):
        raise ParseError(f"bad header name {name[:40]!r}")
    name = COMPACT.get(name, name)
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[raw] = name
    return name


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        return data[:i], data[i + 4 :]
    i = data.find(b"\n\n")
    if i >= 0:
        return data[:i], data[i + 2 :]
    # A message that ends right after its headers with a single CRLF.
    if data.endswith(b"\r\n"):
        return data[:-2], b""
    if data.endswith(b"\n"):
        return data[:-1], b""
    raise ParseError("no end of headers")


def parse(
    data: bytes,
    *,
    datagram: bool = True,
    max_size: int = DEFAULT_MAX_SIZE,
    max_header: int = DEFAULT_MAX_HEADER,
    max_vias: int = DEFAULT_MAX_VIAS,
) -> Request | Response:
    """Parse one whole message.

    For a datagram the body is the rest of the datagram when Content-Length is
    absent (S06); a Content-Length larger than what arrived is an error
    (RFC 3261 §18.3), a smaller one truncates.  For a stream message
    (``datagram=False``) the framer has already cut exactly one message.
    """
    if len(data) > max_size:
        raise ParseError("message too large", status=413)
    # Leading CRLFs are keep-alives / padding (RFC 3261 §7.5).
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")
    head, body = _split_head(data)
    if len(head) > max_header:
        raise ParseError(f"header section over {max_header} bytes", status=513)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError("headers are not UTF-8") from e
    if "\x00" in text:
        raise ParseError("NUL in headers")
    if "\n " in text or "\n\t" in text:
        text = _FOLD.sub(" ", text)
    if text.count("\n") == text.count("\r\n"):
        lines = text.split("\r\n")
    else:  # bare LF line ends: tolerated (RFC 3261 §7.5 robustness)
        lines = text.replace("\r\n", "\n").split("\n")
    first = lines[0]
    headers = Headers()
    hd = headers._d  # hot loop: skip the method call
    names = _NAMES
    for line in lines[1:]:
        raw, colon, value = line.partition(":")
        if not colon:
            if not line.strip():
                continue
            raise ParseError(f"malformed header line {line[:40]!r}")
        name = names.get(raw) or _canonical(raw)
        value = value.strip()
        lst = hd.get(name)
        if lst is None:
            hd[name] = [value]
        else:
            lst.append(value)

    via = hd.get("via")
    # Lines plus commas: exact but for a comma quoted in a Via parameter,
    # which no proxy writes, and linear where split_commas is a Python loop.
    if via is not None and len(via) + sum(v.count(",") for v in via) > max_vias:
        raise ParseError(f"over {max_vias} Via values", status=513)

    cl = hd.get("content-length")
    if cl is not None:
        if len(cl) != 1 and len(set(cl)) != 1:
            raise ParseError("conflicting Content-Length")
        if not (cl[0].isascii() and cl[0].isdigit()) or len(cl[0]) > 10:  # int() of >4300 digits raises
            raise ParseError("bad Content-Length")
        n = int(cl[0])
        if n > len(body):
            raise ParseError("Content-Length larger than the message")
        body = body[:n]
    elif not datagram:
        raise ParseError("Content-Length is required on a stream")

    if first.startswith("SIP/"):
        parts = first.split(" ", 2)
        if len(parts) < 2 or parts[0] != "SIP/2.0":
            raise ParseError("bad status line")
        try:
            code = int(parts[1])
        except ValueError as e:
            raise ParseError("bad status code") from e
        if not 100 <= code <= 699:
            raise ParseError("status code out of range")
        return Response(code, parts[2] if len(parts) > 2 else "", headers, body)

    parts = first.split(" ")
    if len(parts) != 3:
        raise ParseError("bad request line")
    method, uri, version = parts
    if version != "SIP/2.0":
        raise ParseError("unsupported SIP version", status=505)
    if not _TOKEN.match(method) or not uri or ":" not in uri:
        raise ParseError("bad request line")
    return Request(method, uri, headers, body)


class StreamFramer:
    """Cuts a TCP byte stream into whole messages (RFC 3261 §18.3).

    Sans-I/O: feed bytes, get back complete message byte strings.  A header
    section or body over ``max_size`` raises :class:`ParseError`; the caller
    closes the connection (the stream cannot be re-synchronised).
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        while True:
            # Skip keep-alive CRLFs between messages (RFC 5626 §3.5.1 pings).
            skip = 0
            while skip < len(buf) and buf[skip] in (13, 10):
                skip += 1
            if skip:
                del buf[:skip]
            if not buf:
                break
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_size:
                    raise ParseError("header section too large", status=413)
                break
            head = bytes(buf[:end])
            length = _content_length(head)
            total = end + 4 + length
            if total > self.max_size:
                raise ParseError("message too large", status=413)
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
        return out

    @property
    def partial(self) -> bool:
        """Part of a message is buffered (keep-alive CRLFs are not kept):
        the caller times how long a message takes to arrive."""
        return bool(self._buf)


_CL = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$")


def _content_length(head: bytes) -> int:
    m = _CL.search(head)
    if m is None:
        raise ParseError("Content-Length is required on a stream")
    digits = m.group(1)
    if len(digits) > 10:  # int() of over 4300 digits raises ValueError
        raise ParseError("bad Content-Length", status=413)
    return int(digits)


_TOP_BRANCH = re.compile(rb"(?im)^(?:via|v)[ \t]*:[^\r\n,]*?;[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)")


def peek_response(data: bytes) -> tuple[int, str] | None:
    """(status code, top Via branch) of a response, without a full parse.

    All the node needs of a response is to match it to the client
    transaction of a NOTIFY it sent, and fan-out brings thousands of them at
    once.  Anything that does not look like a response yields None.
    """
    if data[:8] != b"SIP/2.0 " or not data[8:11].isdigit() or data[11:12] not in (b" ", b"\r"):
        return None
    m = _TOP_BRANCH.search(data, 0, 4096)
    if m is None:
        return None
    try:
        return int(data[8:11]), m.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None
