"""One error tree for the SIP core.

A :class:`RemoteSipError` is the peer's fault: the shell answers it with
``status_hint`` (and any ``headers``) without logic of its own.  Our own
mistakes are ordinary Python exceptions: the dispatcher answers them 500
and logs them.
"""

from __future__ import annotations


class SipError(Exception):
    status_hint: int = 500

    def __init__(
        self,
        reason: str = "",
        *,
        status: int | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status_hint = status
        self.headers: list[tuple[str, str]] = headers or []


class RemoteSipError(SipError):
    """The peer sent something we refuse; answer with ``status_hint``."""

    status_hint = 400


class ParseError(RemoteSipError):
    """Bytes that are not a SIP message we can read (400 when answerable)."""

    status_hint = 400
