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

#: Paths answered without the bearer secret.
OPEN_PATHS = frozenset({HEALTHZ, READYZ})
#: Largest page a listing returns.
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
SECRET_ENV = "PRESENCE_ADMIN_SECRET"
