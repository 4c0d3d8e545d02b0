"""The package registry and Allow-Events (S04, S17, S29, S72)."""

from __future__ import annotations

import pytest

from presence_node.packages.dialog import DialogPackage
from presence_node.packages.presence import PresencePackage
from presence_node.packages.registry import KNOWN, PackageRegistry
from presence_node.packages.winfo import WatcherInfoPackage


def test_s29_allow_events_lists_tokens_once() -> None:
    registry = PackageRegistry(list(KNOWN))
    assert registry.names == ("presence", "presence.winfo", "dialog", "message-summary", "as-feature-event")
    assert PackageRegistry(["dialog;sla"]).names == ("dialog",)


def test_s72_dialog_sla_is_its_own_dialog_instance() -> None:
    registry = PackageRegistry(["presence", "dialog", "dialog;sla", "presence.winfo"])
    plain, sla = registry.get("dialog"), registry.get("dialog;sla")
    assert isinstance(plain, DialogPackage) and isinstance(sla, DialogPackage)
    assert (plain.name, sla.name) == ("dialog", "dialog;sla")
    assert isinstance(registry.get("presence"), PresencePackage)
    assert isinstance(registry.get("presence.winfo"), WatcherInfoPackage)
    assert [p.name for p in registry.all_packages()] == ["presence", "dialog", "dialog;sla", "presence.winfo"]


def test_s17_unknown_or_disabled_package_is_none() -> None:
    registry = PackageRegistry(["presence"])
    assert registry.get("dialog") is None
    assert registry.get("Presence") is None  # S19: compared byte for byte
    assert registry.get("message-summary") is None


def test_unknown_enabled_name_raises() -> None:
    with pytest.raises(ValueError, match="'dialog;shared'"):
        PackageRegistry(["presence", "dialog;shared"])
