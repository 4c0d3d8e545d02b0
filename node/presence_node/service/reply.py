"""What a handler gives back: the response, and work to do after it is sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable


@dataclass(slots=True)
class Reply:
    code: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: To tag for a final response to an out-of-dialog request (S01).
    to_tag: str | None = None
    #: Runs after the response is on the wire (the initial NOTIFY of S18).
    then: Callable[[], Awaitable[None]] | None = None
