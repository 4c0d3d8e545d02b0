"""Admin API paths and limits, shared by the server and its clients."""

HEALTHZ = "/healthz"
READYZ = "/readyz"
PRESENTITIES = "/presentities"
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
