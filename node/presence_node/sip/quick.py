"""A response to a request made from its raw header lines, without parsing it.

For overload shedding (``service/overload.py``): a 503 must cost a small
fraction of serving the request, or shedding eats the capacity it is meant
to protect.  Parsing and building through :mod:`.parser` and
:mod:`.response` cost a quarter of serving a PUBLISH (measured in-process);
copying the five header lines a response needs as bytes costs a fraction
of that.  Whatever is not plain (a folded line, several Via values on the
top line, a repeated or missing header, no RFC 3261 branch) is left to the
parser: :func:`reject` returns None.
"""

from __future__ import annotations

import re

_VIA = (b"via", b"v")
_TO = (b"to", b"t")
_COPIED = frozenset((b"from", b"f", b"call-id", b"i", b"cseq"))
_SENT_BY = re.compile(rb"SIP\s*/\s*2\.0\s*/\s*[A-Za-z]+\s+([^\s;]+)")
_BRANCH = re.compile(rb";\s*branch\s*=\s*(z9hG4bK[^;\s]*)", re.IGNORECASE)
_RPORT_EMPTY = re.compile(rb";\s*rport\s*(?=;|$)", re.IGNORECASE)
_TAG = re.compile(rb";\s*tag\s*=", re.IGNORECASE)


def reject(data: bytes, host: str, port: int, status: bytes, extra: bytes, to_tag: str) -> tuple[str, str, bytes] | None:
    """(method, server transaction key, response) for the request in
    ``data``: ``status`` (b"503 Service Unavailable") and ``extra`` header
    lines (each ending in CRLF), the top Via stamped as
    :func:`.response.stamp_via` does, ``to_tag`` added to a To without one
    (S01).  None when the request is not plain enough (module docstring)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    vias: list[bytes] = []
    copied: list[bytes] = []
    to = b""
    for line in lines[1:]:
        i = line.find(b":")
        if i <= 0 or line[:1] in (b" ", b"\t"):
            return None
        name = line[:i].rstrip().lower()
        if name in _VIA:
            vias.append(line)
        elif name in _COPIED:
            copied.append(line)
        elif name in _TO:
            if to:
                return None
            to = line[i + 1 :].strip()
    if not vias or not to or len(copied) != 3:
        return None
    top = vias[0][vias[0].find(b":") + 1 :].strip()
    sent_by = _SENT_BY.match(top)
    branch = _BRANCH.search(top)
    if sent_by is None or branch is None or b"," in top:
        return None
    method = lines[0][: lines[0].find(b" ")]
    try:
        key = f"{branch.group(1).decode()}\x00{sent_by.group(1).decode()}\x00{method.decode()}"
    except UnicodeDecodeError:
        return None
    top = _RPORT_EMPTY.sub(f";rport={port}".encode(), top, count=1)
    if b";received=" not in top.lower():
        top += f";received={host}".encode()
    if _TAG.search(to) is None:
        to += f";tag={to_tag}".encode()
    head = [b"SIP/2.0 " + status, b"Via: " + top, *vias[1:], *copied, b"To: " + to]
    return method.decode(), key, b"\r\n".join(head) + b"\r\n" + extra + b"Content-Length: 0\r\n\r\n"
