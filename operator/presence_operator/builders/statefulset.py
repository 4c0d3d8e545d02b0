"""One StatefulSet per location: stable pod names (``<cluster>-<location>-<i>``
is node ``<location>-<i>``), each pod reading ``node-<i>.yaml`` from the
location's ConfigMap.  The DSN, the admin secret and (federation modes) the
cluster secret and the channel's TLS files are mounted from Secrets (only
the needed keys of each)."""

from __future__ import annotations

import hashlib
from typing import Any

from .. import spec as specs
from . import configmap, meta

#: The pod's ordinal is the suffix of its hostname (StatefulSet identity).
COMMAND = ["/bin/sh", "-c", f'exec presence-node --config {meta.CONFIG_DIR}/node-"${{HOSTNAME##*-}}".yaml']


def config_hash(cm: dict[str, Any]) -> str:
    """Annotated on the pod template so that a changed configuration rolls the pods."""
    h = hashlib.sha256()
    for k in sorted(cm["data"]):
        h.update(k.encode() + b"\0" + cm["data"][k].encode() + b"\0")
    return h.hexdigest()[:16]


def build(owner: meta.Owner, location: specs.Location) -> dict[str, Any]:
    spec = owner.spec
    loc_labels = {meta.LOCATION_LABEL: location.name, meta.COMPONENT_LABEL: "node"}
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": meta.configmap_name(owner, location.name)}},
        {"name": "admin-secret", "secret": {
            "secretName": meta.secret_name(owner), "defaultMode": 0o400,
            "items": [{"key": meta.ADMIN_SECRET_KEY, "path": meta.ADMIN_SECRET_KEY}]}},
        {"name": "state", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": meta.CONFIG_DIR, "readOnly": True},
        {"name": "admin-secret", "mountPath": meta.ADMIN_SECRET_DIR, "readOnly": True},
        {"name": "state", "mountPath": meta.STATE_DIR},
    ]
    federated = spec.mode in specs.FEDERATION_MODES
    if federated:
        volumes.append({"name": "cluster-secret", "secret": {
            "secretName": meta.secret_name(owner), "defaultMode": 0o400,
            "items": [{"key": meta.CLUSTER_SECRET_KEY, "path": meta.CLUSTER_SECRET_KEY}]}})
        mounts.append({"name": "cluster-secret", "mountPath": meta.CLUSTER_SECRET_DIR, "readOnly": True})
    if federated and spec.federation_tls is not None:
        volumes.append({"name": "cluster-tls", "secret": {
            "secretName": spec.federation_tls.secret_ref.name, "defaultMode": 0o400,
            "items": [{"key": k, "path": k} for k in specs.TLS_KEYS]}})
        mounts.append({"name": "cluster-tls", "mountPath": meta.CLUSTER_TLS_DIR, "readOnly": True})
    if location.database is not None:
        ref = location.database.secret_ref
        volumes.append({"name": "db", "secret": {"secretName": ref.name, "defaultMode": 0o400,
                                                  "items": [{"key": ref.key, "path": "dsn"}]}})
        mounts.append({"name": "db", "mountPath": meta.DB_DIR, "readOnly": True})
    port = spec.sip.port
    container: dict[str, Any] = {
        "name": "node",
        "image": spec.image,
        "command": COMMAND,
        "ports": [
            {"name": "sip-udp", "containerPort": port, "protocol": "UDP"},
            {"name": "sip-tcp", "containerPort": port, "protocol": "TCP"},
            {"name": "admin", "containerPort": meta.ADMIN_PORT, "protocol": "TCP"},
            *([{"name": meta.CLUSTER_PORT_NAME, "containerPort": meta.CLUSTER_PORT, "protocol": "TCP"}]
              if federated else []),
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2,
                           "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }
    if spec.resources:
        container["resources"] = dict(spec.resources)
    cm = configmap.build(owner, location)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta.metadata(owner, meta.statefulset_name(owner, location.name), **loc_labels),
        "spec": {
            "serviceName": meta.headless_name(owner, location.name),
            "replicas": location.nodes,
            # Pods start together; identity, not ordering, is what we need.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": meta.selector(owner, **{meta.LOCATION_LABEL: location.name})},
            "template": {
                "metadata": {
                    "labels": meta.labels(owner, **loc_labels),
                    "annotations": {f"{meta.DOMAIN}/config-hash": config_hash(cm)},
                },
                "spec": {
                    "serviceAccountName": meta.service_account_name(owner),
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 10,
                    # Without fsGroup the node (non-root) cannot read its
                    # 0400 Secret files: found running the pods with podman.
                    "securityContext": {"runAsNonRoot": True, "runAsUser": meta.NODE_UID,
                                        "runAsGroup": meta.NODE_UID, "fsGroup": meta.NODE_UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
