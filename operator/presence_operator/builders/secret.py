"""The cluster's Secret (admin bearer secret and cluster secret), rendered
from values the caller generated: the only builder that holds secret values,
and only called when the Secret does not exist yet."""

from __future__ import annotations

import base64
from typing import Any

from . import meta


def build(owner: meta.Owner, admin: str, cluster: str) -> dict[str, Any]:
    enc = {k: base64.b64encode(v.encode()).decode() for k, v in
           ((meta.ADMIN_SECRET_KEY, admin), (meta.CLUSTER_SECRET_KEY, cluster))}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta.metadata(owner, meta.secret_name(owner)),
        "data": enc,
    }
