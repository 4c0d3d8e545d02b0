"""The event packages a node serves, chosen by configuration.

``dialog;sla`` is the dialog package with the ``sla`` parameter (S72): it
has its own key, so its watchers and publications stay apart from plain
``dialog``, but ``Allow-Events`` names package tokens only, so both
contribute ``dialog`` once (S04, S29).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..xmlsafe import XmlLimits
from .base import EventPackage
from .dialog import DialogPackage
from .features import FeaturePackage
from .message_summary import MessageSummaryPackage
from .presence import PresencePackage
from .winfo import WatcherInfoPackage

#: What the registry hands out: a published-state package or winfo.
Package = EventPackage | WatcherInfoPackage



@dataclass(frozen=True)
class PackageOptions:
    """What configuration tunes in the packages."""

    #: The limits a published body is checked against.
    limits: XmlLimits = XmlLimits()
    #: A terminated placeholder ``<dialog>`` in idle dialog documents.
    idle_dialog_placeholder: bool = False


_FACTORIES: dict[str, Callable[[PackageOptions], Package]] = {
    "presence": lambda options: PresencePackage(options.limits),
    "presence.winfo": lambda options: WatcherInfoPackage(),
    "dialog": lambda options: DialogPackage("dialog", options.limits,
                                            idle_placeholder=options.idle_dialog_placeholder),
    "dialog;sla": lambda options: DialogPackage("dialog;sla", options.limits,
                                                idle_placeholder=options.idle_dialog_placeholder),
    "message-summary": lambda options: MessageSummaryPackage(),
    "as-feature-event": lambda options: FeaturePackage(options.limits),
}

#: Every package name a node can enable, in Allow-Events order.
KNOWN = tuple(_FACTORIES)


class PackageRegistry:
    """Enabled packages keyed by name (``presence``, ``dialog;sla``…)."""

    def __init__(self, enabled: Sequence[str], options: PackageOptions = PackageOptions()) -> None:
        unknown = [name for name in enabled if name not in _FACTORIES]
        if unknown:
            raise ValueError(f"unknown event package {unknown[0]!r}; known: {', '.join(KNOWN)}")
        self._packages: dict[str, Package] = {name: _FACTORIES[name](options) for name in enabled}
        tokens = (name.split(";", 1)[0] for name in self._packages)
        #: Tokens for Allow-Events, each once, in the order enabled.
        self.names: tuple[str, ...] = tuple(dict.fromkeys(tokens))

    def get(self, key: str) -> Package | None:
        """The package for ``key``: the Event token, plus ``;sla`` when the
        SUBSCRIBE or PUBLISH carries the ``sla`` parameter.  Compared
        byte for byte (S19)."""
        return self._packages.get(key)

    def all_packages(self) -> tuple[Package, ...]:
        return tuple(self._packages.values())
