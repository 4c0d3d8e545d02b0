"""ConfigMap per location: one ``<node>.yaml`` key per node (``presence-node
--config``).  Paths to secrets only: the DSN, the admin secret and the
cluster secret are files mounted from Secrets, never values here."""

from __future__ import annotations

from typing import Any

import yaml

from .. import spec as specs
from . import meta


def node_config(owner: meta.Owner, node: specs.NodeSpec) -> dict[str, Any]:
    spec = owner.spec
    tags = specs.node_tags(spec, node)
    own = [t.name for t in tags if t.home == node.name]
    storage: dict[str, Any] = {"backend": "memory"}
    if spec.location(node.location).database is not None:
        storage = {"backend": "postgres", "dsn_file": f"{meta.DB_DIR}/dsn"}
    cfg = {
        "node_id": node.name,
        "cluster_id": owner.name,
        "sip": f"0.0.0.0:{spec.sip.port}",
        "admin": f"0.0.0.0:{meta.ADMIN_PORT}",
        # Every tag starts as backup: the operator activates it (with an
        # epoch) on the node it picks, so a restarted pod never claims a tag
        # that moved while it was away.
        "sharing_tags": {t.name: "backup" for t in tags},
        "default_tag": (own or [tags[0].name])[0] if tags else None,
        "cluster_pres_events": list(spec.events),
        "storage": storage,
        "admin_secret_file": f"{meta.ADMIN_SECRET_DIR}/{meta.ADMIN_SECRET_KEY}",
        "state_dir": meta.STATE_DIR,
        "log_format": "json",
    }
    # Federation modes: every other node is a peer, reached at its pod's
    # stable DNS name; the cluster secret is a file from the cluster's Secret,
    # and the TLS files (with federationTls) from the spec's.
    fed = specs.federation(spec, node, listen=f"0.0.0.0:{meta.CLUSTER_PORT}",
                           address=lambda p: f"{meta.pod_host(owner, p)}:{meta.CLUSTER_PORT}",
                           secret_file=f"{meta.CLUSTER_SECRET_DIR}/{meta.CLUSTER_SECRET_KEY}",
                           tls_dir=meta.CLUSTER_TLS_DIR)
    if fed is not None:
        cfg["federation"] = fed
    return specs.with_node_config(spec, cfg)


def config_key(node: specs.NodeSpec) -> str:
    """Keyed by index so that a pod finds its file from its ordinal."""
    return f"node-{node.index}.yaml"


def build(owner: meta.Owner, location: specs.Location) -> dict[str, Any]:
    data = {config_key(n): yaml.safe_dump(node_config(owner, n), sort_keys=True)
            for n in specs.nodes(owner.spec) if n.location == location.name}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(owner, meta.configmap_name(owner, location.name),
                                  **{meta.LOCATION_LABEL: location.name}),
        "data": data,
    }
