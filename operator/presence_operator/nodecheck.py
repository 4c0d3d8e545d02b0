"""``spec.nodeConfig`` checked against the node's own configuration model.

The spec model (pure, it does not import the node) only keeps the operator's
keys out; whether the rest is a configuration the nodes accept is the node's
model's question.  Asking it here, before anything runs, turns a typo into a
refused manifest that names the key, instead of pods that exit 2 and
crash-loop.  Used by the kopf handlers and by local mode.
"""

from __future__ import annotations

from pydantic import ValidationError

from presence_node.config import Config

from . import spec as specs


def check(spec: specs.PresenceClusterSpec) -> None:
    """Raise :class:`~.spec.SpecError` naming each ``spec.nodeConfig`` key the
    node would refuse."""
    try:
        Config.model_validate(spec.node_config)
    except ValidationError as e:
        lines = ["invalid spec.nodeConfig:"]
        for err in e.errors():
            key = ".".join(str(p) for p in ("spec", "nodeConfig", *err["loc"]))
            lines.append(f"  {key}: {err['msg']}")
        raise specs.SpecError("\n".join(lines)) from e
