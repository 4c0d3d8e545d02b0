"""The PresenceCluster operator: a pure planner (``spec``, ``health``,
``planner``) and its drivers (``local`` now, kopf later).

The pure modules import no event loop, socket, HTTP client or Kubernetes
library (checked by ``tests/test_planner_layers.py``), so every failover
decision can be tested as a table."""
