"""Admin API port, paths, limits and shapes, shared by the server and its
clients (the ``presence-node tags`` CLI, the operator, the local supervisor)."""

from typing import Literal, TypedDict

#: The admin API's port: the node's default listen port and the port the
#: operator opens in a node pod.  The operator's builders (which import
#: nothing of the node) and the node image write it literally:
#: tests/test_admin_contract.py checks that they agree.
ADMIN_PORT = 8081

HEALTHZ = "/healthz"
READYZ = "/readyz"
PRESENTITIES = "/presentities"
#: One presentity's state for one package, set or cleared by a backend.
PRESENTITY_STATE = "/presentities/{aor}/{event}"
#: Resource lists (RFC 4662) of this node.
LISTS = "/lists"
LIST = "/lists/{uri}"
#: The ``source`` recorded for state pushed through the admin API.
PUSH_SOURCE = "admin-api"
SUBSCRIPTIONS = "/subscriptions"
REGISTRATIONS = "/registrations"
METRICS = "/metrics"
TAGS = "/tags"
TAG_ACTIVATE = "/tags/{tag}/activate"
TAG_DEACTIVATE = "/tags/{tag}/deactivate"
CLUSTER = "/cluster"
#: Digest users (#15.1) of a node with a shared database.
SUBSCRIBERS = "/subscribers"
SUBSCRIBER = "/subscribers/{aor}"
#: Per-presentity allow/deny of watchers (#15.3).
WATCHER_RULES = "/presentities/{aor}/watchers"
WATCHER_RULE = "/presentities/{aor}/watchers/{watcher}"

#: ``reason`` of a 503 from READYZ: the node is starting or stopping, or it
#: runs but its storage does not answer (alive: not a node failure when
#: the nodes sharing that storage all say so).
NOT_READY = "not-ready"
STORAGE_UNAVAILABLE = "storage-unavailable"

#: Paths answered without the bearer secret.
OPEN_PATHS = frozenset({HEALTHZ, READYZ})
#: Largest page a listing returns.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
SECRET_ENV = "PRESENCE_ADMIN_SECRET"


class Tag(TypedDict):
    """One sharing tag as GET /tags lists it and the tag POSTs answer."""

    tag: str
    #: active: this node owns it; backup: another node (or none) does.
    state: Literal["active", "backup"]
    owner: str | None
    epoch: int
    #: When the owner last changed (Unix time).
    since: float
    #: A node's private tag (``~node``): never moved.
    private: bool
