"""Local mode: a PresenceCluster manifest run on one machine.

``presence-cluster up`` starts a private PostgreSQL per location (where the
mode shares a database) and one ``presence-node`` process per node, all on
loopback and detached, then supervises them in the foreground with the same
health detector and planner as the operator.  ``status`` prints the table
``kubectl get presenceclusters -o wide`` would; ``down`` stops, by pid,
everything ``up`` started."""
