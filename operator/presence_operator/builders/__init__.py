"""Pure manifest builders: a PresenceCluster spec in, Kubernetes objects
(plain dicts) out, one module per kind.  No client, no I/O, no secret values
(except :mod:`.secret`, which renders values given to it).

``render(owner)`` returns every object a PresenceCluster owns, in apply
order (ServiceAccount, ConfigMaps, Services, StatefulSets).
"""

from __future__ import annotations

from typing import Any

from . import configmap, meta, rbac, service, statefulset
from .meta import Owner

__all__ = ["Owner", "render", "meta"]


def render(owner: Owner) -> list[dict[str, Any]]:
    spec = owner.spec
    out: list[dict[str, Any]] = [rbac.node_service_account(owner)]
    out += [configmap.build(owner, loc) for loc in spec.locations]
    out += [service.headless(owner, loc) for loc in spec.locations]
    out += service.sip_services(owner)
    out += [statefulset.build(owner, loc) for loc in spec.locations]
    return out
