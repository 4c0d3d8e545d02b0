"""Identifiers the node mints: etags, dialog tags and branches.

Each carries the node id plus a per-process random prefix and a counter, so
two nodes (or one node before and after a restart) never issue the same
value (S36, S78) — unlike OpenSIPS's pid/time etags, which collide between
container replicas.
"""

from __future__ import annotations

import itertools
import secrets


class Ids:
    __slots__ = ("_prefix", "_count", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._prefix = f"{node_id}.{secrets.token_hex(4)}"
        self._count = itertools.count(1)

    def etag(self) -> str:
        return f"{self._prefix}.{next(self._count):x}"

    def tag(self) -> str:
        return f"{self._prefix}.{next(self._count):x}"

    def branch(self) -> str:
        return f"z9hG4bK{self._prefix}.{next(self._count):x}"
