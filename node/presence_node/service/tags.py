"""Sharing tags as this node sees them (the seed's ownership).

The state lives in storage (the shared database in a cluster), so every node
lists every tag of the cluster with its owner and epoch; "active here" just
means the stored owner is this node.  Activation takes the next epoch, or
the epoch an orchestrator passes (refused with 409 when not above the
current one), and makes the previous owner a backup in the same step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

from ..config import Config
from ..storage import Storage, TagState


class PrivateTag(ValueError):
    """A node's private tag cannot be moved (admin API: 403)."""


@dataclass(frozen=True, slots=True)
class TagView:
    name: str
    state: Literal["active", "backup"]
    owner: str | None
    epoch: int
    since: float
    private: bool


class SharingTags:
    def __init__(self, config: Config, storage: Storage, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.storage = storage
        self.node = config.node_id
        self.clock = clock
        #: Called after this node activated or gave up a tag (the
        #: federation tells its peers).
        self.on_change: Callable[[], None] = lambda: None

    async def start(self) -> None:
        """Create the configured tags and this node's private tag.  Start-up
        never takes a tag from a live owner and never deletes anything."""
        wanted = {self.config.private_tag: True}
        wanted.update({name: state == "active" for name, state in self.config.sharing_tags.items()})
        await self.storage.ensure_tags(wanted, self.node, self.clock())

    def _view(self, t: TagState) -> TagView:
        return TagView(t.name, "active" if t.owner == self.node else "backup", t.owner, t.epoch, t.since, t.name.startswith("~"))

    async def list(self) -> list[TagView]:
        return [self._view(t) for t in await self.storage.tags()]

    async def activate(self, name: str, epoch: int | None = None) -> TagView:
        self._movable(name)
        view = self._view(await self.storage.activate_tag(name, self.node, self.clock(), epoch))
        self.on_change()
        return view

    async def deactivate(self, name: str) -> TagView:
        self._movable(name)
        view = self._view(await self.storage.deactivate_tag(name, self.node, self.clock()))
        self.on_change()
        return view

    @staticmethod
    def _movable(name: str) -> None:
        if name.startswith("~"):
            raise PrivateTag(f"{name} is a node's private tag; it cannot be moved")
