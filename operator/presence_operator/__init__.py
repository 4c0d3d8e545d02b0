"""The PresenceCluster operator: a pure planner (``spec``, ``health``,
``planner``, ``builders``) and its drivers (``handlers``: kopf in
Kubernetes; ``local``: presence-cluster on one machine).

The pure modules import no event loop, socket, HTTP client or Kubernetes
library (checked by ``tests/test_layers.py``), so every failover
decision can be tested as a table."""
