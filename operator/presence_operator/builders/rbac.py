"""RBAC with the least verbs.

- Per cluster: the nodes' ServiceAccount, with no Role and no token mounted
  (a node never talks to the Kubernetes API).
- Once per namespace the operator watches: its ServiceAccount, a Role with
  exactly the verbs the handlers use (see ``OPERATOR_RULES``) and the
  RoleBinding; cluster-wide only what kopf itself observes
  (``OPERATOR_CLUSTER_RULES``).  The Helm chart (charts/sip-presence-operator)
  and deploy/base grant exactly these; tests/test_chart.py compares.  ``delete`` is not granted: owner references let the garbage
  collector remove what a PresenceCluster owned.
"""

from __future__ import annotations

from typing import Any

from .. import spec as specs
from . import meta

OPERATOR_RULES: list[dict[str, Any]] = [
    # kopf: watch the custom resources, add its finalizer/annotations; status.
    {"apiGroups": [specs.GROUP], "resources": ["presenceclusters"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [specs.GROUP], "resources": ["presenceclusters/status"], "verbs": ["get", "patch"]},
    # Rendered objects: created or patched, never deleted (owner references).
    {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"],
     "verbs": ["get", "create", "patch"]},
    # The admin secret: read, or generated when absent.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
    # Pod IPs and readiness: kopf's watch feeding the pods index (list, watch),
    # never a LIST per probe tick; the owner label moved in ha mode (patch).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
    # Failover, deferral and switchover events.
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
]

#: What kopf itself needs cluster-wide (a ClusterRole): it observes namespaces
#: (it lists them even for an exact ``--namespace``) and CRDs at runtime.
#: Peering is off (``--standalone``; one replica, ``strategy: Recreate``).
OPERATOR_CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]


def node_service_account(owner: meta.Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta.metadata(owner, meta.service_account_name(owner)),
        "automountServiceAccountToken": False,
    }


def operator_rbac(namespace: str, name: str = "presence-operator") -> list[dict[str, Any]]:
    md = {"namespace": namespace, "labels": {"app.kubernetes.io/name": name}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, **md}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, **md},
         "rules": OPERATOR_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, **md},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]
