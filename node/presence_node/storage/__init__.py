"""Storage behind one interface: in memory (one node) or PostgreSQL (shared).

The interface is shaped for a database: every method is one atomic
operation (compare-and-swap on an etag, increment-and-return of a NOTIFY
CSeq), records are flat rows, and nothing relies on object identity.
"""

from .base import PresentityFull, RequestExpired, StaleEpoch, Storage, StorageUnavailable, UnknownTag
from .memory import MemoryStorage
from .records import Publication, Registration, Subscription, TagState, Usage

__all__ = [
    "Storage",
    "MemoryStorage",
    "Publication",
    "Registration",
    "Subscription",
    "TagState",
    "Usage",
    "PresentityFull",
    "StaleEpoch",
    "UnknownTag",
    "StorageUnavailable",
    "RequestExpired",
]
