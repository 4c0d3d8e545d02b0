"""Identifiers the node mints: etags, dialog tags and branches.

Each is the node id and 96 bits from :func:`secrets.token_urlsafe`, drawn
anew for every identifier (about 1.5 µs).  The node id keeps two nodes'
values apart (S36, S78: unique cluster-wide, unlike OpenSIPS's pid/time
etags, which collide between container replicas); the random part makes
them unguessable, which a counter was not:

- an etag is the only credential a PUBLISH needs to refresh, modify or
  remove a publication: from one's own etag the next one was a guess away
  (another presentity's publication was removed on the second try);
- a NOTIFY's branch is all a response is matched by: a predictable one let
  an off-path party answer our next NOTIFY with a forged 481, which ends
  the subscription;
- a dialog tag must carry 32 random bits (RFC 3261 §19.3).  On its own it
  would not let a third party refresh or end a subscription (an in-dialog
  SUBSCRIBE must also match the subscriber's Call-ID and From tag), but it
  is listed in the admin API and it costs nothing to make it random too.

96 random bits also make a repeat, even between two processes of one node
id, far less likely than a hardware fault (birthday bound: 2^48 ids).
"""

from __future__ import annotations

from secrets import token_urlsafe

#: Random bytes per identifier (96 bits, 16 base64url characters).
RANDOM_BYTES = 12


class Ids:
    __slots__ = ("_prefix", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._prefix = f"{node_id}."

    def etag(self) -> str:
        return self._prefix + token_urlsafe(RANDOM_BYTES)

    def tag(self) -> str:
        return self._prefix + token_urlsafe(RANDOM_BYTES)

    def branch(self) -> str:
        return "z9hG4bK" + self._prefix + token_urlsafe(RANDOM_BYTES)
