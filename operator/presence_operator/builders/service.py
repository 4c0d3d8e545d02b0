"""Services: a headless one per location (stable pod DNS, ready or not; the
federation modes' peers reach each other's ``cluster`` port through it) and
the SIP Services clients use.

In ``ha`` mode there is one SIP Service per tag, selecting the pod labelled
``owner.presence.example.org/<tag>: "true"``: the operator moves that label
on failover, the Kubernetes form of the seed's VIP.  In the other modes one
SIP Service per location selects all of its pods (any node serves any
request; the tags only gate timer duties)."""

from __future__ import annotations

from typing import Any

from .. import spec as specs
from . import meta


def _sip_ports(port: int) -> list[dict[str, Any]]:
    return [
        {"name": "sip-udp", "port": port, "targetPort": "sip-udp", "protocol": "UDP"},
        {"name": "sip-tcp", "port": port, "targetPort": "sip-tcp", "protocol": "TCP"},
    ]


def headless(owner: meta.Owner, location: specs.Location) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(owner, meta.headless_name(owner, location.name),
                                  **{meta.LOCATION_LABEL: location.name}),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": meta.selector(owner, **{meta.LOCATION_LABEL: location.name}),
            "ports": [*_sip_ports(owner.spec.sip.port),
                      {"name": "admin", "port": meta.ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"},
                      *([{"name": meta.CLUSTER_PORT_NAME, "port": meta.CLUSTER_PORT,
                          "targetPort": meta.CLUSTER_PORT_NAME, "protocol": "TCP"}]
                        if owner.spec.mode in specs.FEDERATION_MODES else [])],
        },
    }


def sip_services(owner: meta.Owner) -> list[dict[str, Any]]:
    spec = owner.spec
    out = []
    if spec.mode == "ha":
        for t in specs.tags(spec):
            sel = meta.selector(owner, **{meta.LOCATION_LABEL: t.location, meta.owner_label(t.name): "true"})
            out.append(_sip(owner, meta.sip_service_name(owner, t.name), sel,
                            {meta.LOCATION_LABEL: t.location, f"{meta.DOMAIN}/tag": t.name}))
    else:
        for loc in spec.locations:
            sel = meta.selector(owner, **{meta.LOCATION_LABEL: loc.name})
            out.append(_sip(owner, meta.sip_service_name(owner, loc.name), sel, {meta.LOCATION_LABEL: loc.name}))
    return out


def _sip(owner: meta.Owner, name: str, selector: dict[str, str], extra: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(owner, name, **extra),
        "spec": {"type": owner.spec.sip.service_type, "selector": selector,
                 "ports": _sip_ports(owner.spec.sip.port)},
    }
