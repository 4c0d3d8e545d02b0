"""Building responses to requests (RFC 3261 §8.2.6, RFC 3581).

S01: every response copies all Via values in order, From, Call-ID and CSeq;
final responses get a To tag when the request had none.  S02: with ``rport``
in the top Via, ``received=`` and ``rport=`` are filled in.  S46: no
Record-Route is ever copied.

A response is the part it copies from its request and a :class:`Final`,
the part that is ours; a server transaction keeps only the latter (S03).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ParseError
from .message import Request, serialise_tail, split_commas
from .status import reason

_RPORT_EMPTY = re.compile(r";\s*rport(?=\s*(;|$))", re.IGNORECASE)


def stamp_via(top_via: str, src_host: str, src_port: int) -> str:
    """Add ``received`` (always, harmless and what proxies expect) and fill an
    empty ``rport`` with the source port (RFC 3581 §4)."""
    out = top_via
    if _RPORT_EMPTY.search(out):
        out = _RPORT_EMPTY.sub(f";rport={src_port}", out, count=1)
    if ";received=" not in out.lower():
        out = f"{out};received={src_host}"
    return out


@dataclass(frozen=True, slots=True)
class Final:
    """A response less what it copies from its request (Via, From, To,
    Call-ID, CSeq, Record-Route): what a server transaction keeps for Timer
    J.  A retransmitted request brings those copies again, so the response
    rendered from it is the same bytes, while the table holds no echo of
    the request: kept whole, a request with 55 KB of Via cost 55 KB for
    32 s."""

    code: int
    phrase: str
    to_tag: str
    #: Our headers, Content-Length, the blank line and the body.
    tail: bytes

    @property
    def size(self) -> int:
        return len(self.phrase) + len(self.to_tag) + len(self.tail)


class ResponseBuilder:
    """Everything a response to one request copies, ready to serialise many
    times (a 100 Trying and a final response share it)."""

    __slots__ = ("vias", "from_", "to", "call_id", "cseq", "has_to_tag", "record_route")

    def __init__(self, req: Request, src_host: str, src_port: int) -> None:
        h = req.headers
        via_lines = h.lines("via")
        if not via_lines:
            raise ParseError("no Via")
        vias = split_commas(via_lines[0]) + [v for line in via_lines[1:] for v in split_commas(line)]
        if not vias:
            raise ParseError("empty Via")
        vias[0] = stamp_via(vias[0], src_host, src_port)
        self.vias = vias
        self.from_ = h.get("from") or ""
        self.to = h.get("to") or ""
        self.call_id = h.get("call-id") or ""
        self.cseq = h.get("cseq") or ""
        self.has_to_tag = ";tag=" in self.to.replace(" ", "").lower()
        # Copied only into a 2xx that creates a dialog (RFC 3261 §12.1.1),
        # never into other responses (S46: not for PUBLISH).
        self.record_route = h.lines("record-route") if req.method == "SUBSCRIBE" else []

    def build(
        self,
        code: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        to_tag: str | None = None,
        phrase: str | None = None,
    ) -> bytes:
        return self.render(final(code, headers, body, to_tag=to_tag, phrase=phrase))

    def render(self, response: Final) -> bytes:
        """The whole response: the copies from this request, then ``response``."""
        code = response.code
        out = [f"SIP/2.0 {code} {response.phrase}"]
        out.extend(f"Via: {v}" for v in self.vias)
        to = self.to
        if code >= 200 and not self.has_to_tag and response.to_tag and to:
            to = f"{to};tag={response.to_tag}"
        if self.from_:
            out.append(f"From: {self.from_}")
        if to:
            out.append(f"To: {to}")
        if self.call_id:
            out.append(f"Call-ID: {self.call_id}")
        if self.cseq:
            out.append(f"CSeq: {self.cseq}")
        if self.record_route and 200 <= code < 300 and not self.has_to_tag:
            out.extend(f"Record-Route: {rr}" for rr in self.record_route)
        out.append("")
        return "\r\n".join(out).encode() + response.tail


def final(
    code: int,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    to_tag: str | None = None,
    phrase: str | None = None,
) -> Final:
    """Our part of a response (see :class:`Final`)."""
    return Final(code, phrase or reason(code), to_tag or "", serialise_tail(headers or (), body))
