"""The ``message-summary`` package (RFC 3842: message waiting indication).

Every desk phone subscribes to its own mailbox's summary to light its MWI
lamp; a voicemail server PUBLISHes it (or a backend sets it through the
admin API).  The body is not XML but header-like lines (§5.2)::

    Messages-Waiting: yes
    Message-Account: sip:alice@vmail.example.com
    Voice-Message: 4/8 (1/2)

A mailbox has one summary, so of several live publications the newest is
the state (a server that lost its etag and published afresh replaces, not
adds to, what it said before).  Bodies are checked line by line and stored
byte for byte, as PIDF is (D8).  The node never sends unsolicited MWI
NOTIFYs (RFC 3842 §3 allows them; phones that rely on them subscribe
anyway): only subscriptions get NOTIFYs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .base import BadBody, Document, require_type

MWI_TYPE = "application/simple-message-summary"

#: The message-context classes of RFC 3458 §4, the names a summary line may
#: carry (compared without case, as header names are).
_CLASSES = frozenset({"voice-message", "fax-message", "pager-message", "multimedia-message", "text-message", "none"})
_NAME = re.compile(r"[A-Za-z0-9!%*_+`'~.\-]+")
# newmsgs "/" oldmsgs [ "(" new-urgentmsgs "/" old-urgentmsgs ")" ]; nine
# digits are more messages than any mailbox holds and stay a small int.
_COUNTS = re.compile(r"\s*\d{1,9}\s*/\s*\d{1,9}\s*(?:\(\s*\d{1,9}\s*/\s*\d{1,9}\s*\)\s*)?")
_ACCOUNT = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_IDLE = b"Messages-Waiting: no\r\n"


class MessageSummaryPackage:
    """``Event: message-summary`` with ``application/simple-message-summary``."""

    name: str = "message-summary"
    content_types: tuple[str, ...] = (MWI_TYPE,)
    publishable: bool = True

    def check_publication(self, body: bytes, content_type: str) -> bytes:
        """Accept a summary (RFC 3842 §5.2) and return it unchanged.

        Refused with 400, naming the line: not UTF-8 or holding control
        characters, no ``Messages-Waiting`` first (or it twice, or a value
        but yes/no), a ``Message-Account`` that is not a URI, a line that
        is not ``name: value``, or a summary line of an RFC 3458 class
        whose counts are not ``new/old (urgent-new/urgent-old)``.  Other
        names pass, as extension headers do; the message headers after the
        blank line are only checked for encoding.
        """
        require_type(self.name, content_type, MWI_TYPE)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadBody("a message summary must be UTF-8 text") from None
        if _CONTROL.search(text):
            raise BadBody("a message summary must not hold control characters")
        summary = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]
        lines = [line for line in re.split(r"\r?\n", summary) if line.strip()]
        if not lines or lines[0].partition(":")[0].strip().lower() != "messages-waiting":
            raise BadBody("a message summary starts with a Messages-Waiting line")
        for number, line in enumerate(lines, 1):
            _check_line(number, line)
        return body

    def compose(self, entity: str, bodies: Sequence[bytes], params: Mapping[str, str] | None = None) -> Document:
        """The newest live summary, or ``Messages-Waiting: no`` without one
        (the D3 of MWI: nothing known, no lamp); ``entity`` and ``params``
        are not part of this format."""
        return Document(bodies[-1] if bodies else _IDLE, MWI_TYPE)


def _check_line(number: int, line: str) -> None:
    name, colon, value = line.partition(":")
    name = name.strip()
    if not colon or not _NAME.fullmatch(name):
        raise BadBody(f"message summary line {number} is not 'name: value'")
    key = name.lower()
    if key == "messages-waiting":
        if number != 1:
            raise BadBody("Messages-Waiting must come once, first")
        if value.strip().lower() not in ("yes", "no"):
            raise BadBody(f"Messages-Waiting must be yes or no, got {value.strip()!r}")
    elif key == "message-account":
        if not _ACCOUNT.fullmatch(value):
            raise BadBody(f"Message-Account must be a URI, got {value.strip()!r}")
    elif key in _CLASSES and not _COUNTS.fullmatch(value):
        raise BadBody(f"{name} must be new/old or new/old (urgent-new/urgent-old), got {value.strip()!r}")
