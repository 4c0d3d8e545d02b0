"""Resource lists (RFC 4662 with RFC 4826-style lists, no XCAP server).

A list is a URI of the served domain (``sip:alice-blf@example.com``) whose
members the node watches on a subscriber's behalf: a SUBSCRIBE to it with
``Supported: eventlist`` gets one NOTIFY per change of any member, a
``multipart/related`` RLMI document (:mod:`..packages.rlmi`).  Lists come
from the configuration (``resource_lists``: the operator writes them from
the PresenceCluster spec or a ConfigMap) and from the admin API, which
changes them on the node it is sent to.  Kept in memory, with the reverse
index a member's change needs to find its lists in one dict read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from ..sip.errors import ParseError
from ..sip.headers import parse_uri


class ListRefused(ValueError):
    """A list the node will not hold (bad URI, too many members or lists)."""


def canonical(uri: str) -> str:
    """The AOR (``user@domain``) of a list or member URI, with or without
    scheme; :class:`ListRefused` for anything else."""
    text = uri.strip()
    try:
        aor = parse_uri(text if ":" in text else f"sip:{text}").aor
    except ParseError:
        raise ListRefused(f"{uri!r} is not a SIP URI") from None
    if "@" not in aor or aor.startswith("@"):
        raise ListRefused(f"{uri!r} names no user@domain")
    return aor


class ResourceLists:
    """List AOR → member AORs (in order, each once), and member → lists."""

    def __init__(self, max_lists: int, max_members: int, lists: Mapping[str, Sequence[str]] | None = None) -> None:
        self.max_lists = max_lists
        self.max_members = max_members
        self._lists: dict[str, tuple[str, ...]] = {}
        self._containing: dict[str, set[str]] = {}
        for uri, members in (lists or {}).items():
            self.set(uri, members)

    def get(self, aor: str) -> tuple[str, ...] | None:
        return self._lists.get(aor)

    def containing(self, member: str) -> tuple[str, ...]:
        return tuple(self._containing.get(member, ()))

    def set(self, uri: str, members: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        """Create or replace a list; returns its AOR and members as kept."""
        aor = canonical(uri)
        kept = tuple(dict.fromkeys(canonical(m) for m in members))
        if len(kept) > self.max_members:
            raise ListRefused(f"a list holds at most {self.max_members} members (limits.max_list_members)")
        if aor in kept:
            raise ListRefused("a list cannot contain itself")
        if aor not in self._lists and len(self._lists) >= self.max_lists:
            raise ListRefused(f"the node holds at most {self.max_lists} lists (limits.max_resource_lists)")
        self.delete(aor)
        self._lists[aor] = kept
        for member in kept:
            self._containing.setdefault(member, set()).add(aor)
        return aor, kept

    def delete(self, aor: str) -> bool:
        members = self._lists.pop(aor, None)
        if members is None:
            return False
        for member in members:
            holders = self._containing[member]
            holders.discard(aor)
            if not holders:
                del self._containing[member]
        return True

    def items(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        return iter(sorted(self._lists.items()))

    def __len__(self) -> int:
        return len(self._lists)
