"""The executor (``presence_operator.executor``) with fake ports: the order
of status writes, orders and pod labels in a failover; the 409 and
unreachable answers; Events deduplicated; a restarted executor rolling the
recorded intent forward.  No Kubernetes, no node processes, a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import aiohttp
import pytest

from presence_node.admin.client import AdminError, Probe
from presence_operator import spec as specs
from presence_operator.executor import EVENT_REPEAT_SECONDS, Executor, Observation
from presence_operator.planner import EventReason, EventType

T0 = 1_700_000_000.0
HA = specs.PresenceClusterSpec.model_validate({
    "mode": "ha", "failover": {"detectionSeconds": 1},
    "locations": [{"name": "l1", "nodes": 2, "database": {"secretRef": {"name": "db", "key": "dsn"}}}]})


class Journal(list):
    """Everything the ports were asked, in order."""


class FakeStore:
    def __init__(self, journal: Journal, initial: Mapping[str, Any] | None = None) -> None:
        self.journal, self.stored = journal, dict(initial or {})
        self.writes: list[dict[str, Any]] = []

    async def read(self) -> dict[str, Any]:
        return dict(self.stored)

    async def write(self, status: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        self.stored = dict(status)
        self.writes.append(dict(status))
        self.journal.append(("write", "intent" in status, dict(patch)))


class FakeEvents:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, str]] = []

    def emit(self, type: EventType, reason: EventReason, message: str) -> None:
        self.emitted.append((type, reason, message))


class FakeAdmin:
    """A node's admin API: records orders; ``fail`` is raised instead when set."""

    def __init__(self, node: str, journal: Journal) -> None:
        self.node, self.journal = node, journal
        self.fail: Exception | None = None

    async def activate(self, tag: str, epoch: int | None = None) -> Any:
        self.journal.append(("activate", self.node, tag, epoch))
        if self.fail is not None:
            raise self.fail

    async def deactivate(self, tag: str) -> Any:
        self.journal.append(("deactivate", self.node, tag))
        if self.fail is not None:
            raise self.fail


class FakeRouting:
    def __init__(self, journal: Journal, nodes: list[str]) -> None:
        self.journal, self._nodes = journal, nodes

    def nodes(self) -> list[str]:
        return list(self._nodes)

    async def label(self, node: str, tag: str, on: bool) -> None:
        self.journal.append(("label", node, tag, on))


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.lines.append(("warning", msg))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, *, routing: bool = True, stored: Mapping[str, Any] | None = None) -> None:
        self.journal = Journal()
        self.store = FakeStore(self.journal, stored)
        self.events, self.log, self.clock = FakeEvents(), FakeLog(), Clock()
        self.admins = {n: FakeAdmin(n, self.journal) for n in ("l1-0", "l1-1")}
        self.routing = FakeRouting(self.journal, ["l1-0", "l1-1"]) if routing else None
        self.ex = Executor(HA, store=self.store, events=self.events, admins=self.admins, log=self.log,
                           routing=self.routing, clock=self.clock, monotonic=self.clock)

    async def tick(self, at: float, **nodes: tuple[bool, dict[str, int]]) -> list:
        """``nodes``: name (``l1_0``) -> (up and answering, tags it reports active)."""
        self.clock.now = T0 + at
        start = len(self.journal)
        seen = {n.replace("_", "-"): Observation("l1", up, Probe(up, False, up, dict(active)))
                for n, (up, active) in nodes.items()}
        await self.ex.tick(seen)
        return self.journal[start:]


def orders(entries: list) -> list:
    return [e for e in entries if e[0] != "write"]


async def settled_on_l1_0(rig: Rig) -> None:
    await rig.ex.load()
    await rig.tick(0, l1_0=(True, {"vip": 1}), l1_1=(True, {}))
    assert rig.store.stored["phase"] == "Ready" and rig.store.stored["tags"]["vip"]["owner"] == "l1-0"


async def test_failover_intent_first_then_labels_and_order_then_cleared_with_the_record():
    rig = Rig()
    await settled_on_l1_0(rig)
    labels = await rig.tick(0.1, l1_0=(True, {"vip": 1}), l1_1=(True, {}))
    assert labels == [("label", "l1-0", "vip", True), ("label", "l1-1", "vip", False)]  # the Service follows the owner
    await rig.tick(0.5, l1_0=(False, {}), l1_1=(True, {}))  # suspect: nothing moves
    assert rig.store.stored["nodes"]["l1-0"]["health"] == "suspect"
    step = await rig.tick(1.6, l1_0=(False, {}), l1_1=(True, {}))
    # The intent is stored before any label or order; no Service selects the old owner while the tag moves;
    # l1-0 does not answer, so it is not deactivated and the epoch is one above.
    assert step[0] == ("write", True, {"intent": {"reason": "node-down", "started": T0 + 1.6, "detected": T0 + 0.5,
                                                  "moves": [{"tag": "vip", "from": "l1-0", "to": "l1-1", "epoch": 2,
                                                             "deactivate": False}]}})
    assert orders(step) == [("label", "l1-0", "vip", False), ("activate", "l1-1", "vip", 2),
                            ("label", "l1-1", "vip", True),
                            # and after the plan, the recorded owner (l1-0 until the move is seen) has the label
                            ("label", "l1-0", "vip", True), ("label", "l1-1", "vip", False)]
    assert rig.store.stored["phase"] == "FailingOver"
    assert ("info", "tag vip active on l1-1 at epoch 2 1.10 s after the first failed probe") in rig.log.lines
    assert [(t, r) for t, r, _ in rig.events.emitted] == [("Warning", "Failover")]

    step = await rig.tick(1.8, l1_0=(False, {}), l1_1=(True, {"vip": 2}))
    (write,) = [e for e in step if e[0] == "write"]
    st = rig.store.stored
    # ClearIntent rode with the status write: intent gone, record and count in the same write.
    assert write[1] is False and write[2]["intent"] is None and write[2]["failoverCount"] == 1
    assert st["lastFailover"]["from"] == "l1-0" and st["lastFailover"]["to"] == "l1-1"
    assert st["lastFailover"]["seconds"] == 1.3 and st["tags"]["vip"]["owner"] == "l1-1"
    assert ("label", "l1-1", "vip", True) in orders(step)
    assert rig.events.emitted[-1][1] == "FailoverComplete"
    # No status write ever showed the intent gone without the failover it completed.
    for before, after in zip(rig.store.writes, rig.store.writes[1:]):
        if "intent" in before and "intent" not in after:
            assert after["failoverCount"] == before["failoverCount"] + 1 and after["lastFailover"]


async def test_local_mode_without_routing_sets_no_labels_and_writes_the_same_layout():
    kube, local = Rig(), Rig(routing=False)
    for rig in (kube, local):
        await settled_on_l1_0(rig)
        await rig.tick(0.5, l1_0=(False, {}), l1_1=(True, {}))
        await rig.tick(1.6, l1_0=(False, {}), l1_1=(True, {}))
        await rig.tick(1.8, l1_0=(False, {}), l1_1=(True, {"vip": 2}))
    assert not [e for e in local.journal if e[0] == "label"]
    assert kube.store.stored == local.store.stored


async def test_nothing_changed_nothing_written():
    rig = Rig()
    await settled_on_l1_0(rig)
    n = len(rig.store.writes)
    await rig.tick(0.1, l1_0=(True, {"vip": 1}), l1_1=(True, {}))
    assert len(rig.store.writes) == n


@pytest.mark.parametrize("fail, landed, warning", [
    (AdminError(409, {"error": "stale epoch", "owner": "l1-1", "current_epoch": 2}), True, None),
    (AdminError(409, {"error": "stale epoch", "owner": "l1-0", "current_epoch": 5}), False, "failed: HTTP 409"),
    (AdminError(500, "boom"), False, "failed: HTTP 500"),
    (aiohttp.ClientConnectionError("refused"), False, "unreachable"),
    (asyncio.TimeoutError(), False, "retried next tick"),
])
async def test_activation_answers(fail, landed, warning):
    """A 409 from the target naming itself: the order landed before.  Any
    other refusal, or no answer: a warning, no label, and the intent stays
    for the next tick to re-send the same order."""
    rig = Rig()
    await settled_on_l1_0(rig)
    await rig.tick(0.5, l1_0=(False, {}), l1_1=(True, {}))
    rig.admins["l1-1"].fail = fail
    step = await rig.tick(1.6, l1_0=(False, {}), l1_1=(True, {}))
    assert (("label", "l1-1", "vip", True) in step) is landed
    assert any("tag vip active on l1-1" in m for _, m in rig.log.lines) is landed
    if warning:
        assert any(lvl == "warning" and warning in m for lvl, m in rig.log.lines)
    rig.admins["l1-1"].fail = None
    step = await rig.tick(1.8, l1_0=(False, {}), l1_1=(True, {}))  # not seen active yet: the same order again
    assert ("activate", "l1-1", "vip", 2) in step and not [e for e in step if e[0] == "write" and e[2].get("intent")]


async def test_deactivation_is_best_effort_and_unlabels_first():
    rig = Rig()
    await settled_on_l1_0(rig)
    rig.admins["l1-0"].fail = aiohttp.ClientConnectionError("refused")
    # l1-0 answers, yet is fenced: deactivate it (failing), then activate on l1-1 two epochs up.
    rig.clock.now = T0 + 0.2
    seen = {n: Observation("l1", True, Probe(True, False, True, a)) for n, a in (("l1-0", {"vip": 1}), ("l1-1", {}))}
    start = len(rig.journal)
    await rig.ex.tick(seen, fenced=frozenset({"l1-0"}))
    step = orders(rig.journal[start:])
    assert step[:4] == [("label", "l1-0", "vip", False), ("deactivate", "l1-0", "vip"),
                        ("label", "l1-0", "vip", False), ("activate", "l1-1", "vip", 3)]
    assert any(lvl == "warning" and "deactivate vip on l1-0 failed" in m for lvl, m in rig.log.lines)
    assert rig.store.stored["fenced"] == ["l1-0"]


async def test_no_admin_client_no_order_and_no_label():
    rig = Rig()
    await settled_on_l1_0(rig)
    await rig.tick(0.5, l1_0=(False, {}), l1_1=(True, {}))
    del rig.admins["l1-1"]
    step = await rig.tick(1.6, l1_0=(False, {}), l1_1=(True, {}))
    # Nothing to send the order through: no order, and no label moved for it; the Service stays on the recorded owner.
    assert orders(step) == [("label", "l1-0", "vip", True), ("label", "l1-1", "vip", False)]
    assert "intent" in rig.store.stored  # re-sent once the node has a client again


async def test_a_restarted_executor_rolls_the_stored_intent_forward_with_its_epoch():
    first = Rig()
    await settled_on_l1_0(first)
    await first.tick(0.5, l1_0=(False, {}), l1_1=(True, {}))
    first.admins["l1-1"].fail = aiohttp.ClientConnectionError("refused")  # the order never lands
    await first.tick(1.6, l1_0=(False, {}), l1_1=(True, {}))
    intent = first.store.stored["intent"]

    second = Rig(stored=first.store.stored)  # a new driver, same store, a fresh health detector
    await second.ex.load()
    step = await second.tick(1.7, l1_0=(False, {}), l1_1=(True, {}))
    assert ("activate", "l1-1", "vip", 2) in step  # the recorded epoch, not a new intent
    assert second.store.stored["intent"] == intent
    await second.tick(1.8, l1_0=(False, {}), l1_1=(True, {"vip": 2}))
    assert "intent" not in second.store.stored and second.store.stored["failoverCount"] == 1


async def test_events_deduplicated_within_the_repeat_period():
    rig = Rig()
    for t in (0.0, 1.0, EVENT_REPEAT_SECONDS, EVENT_REPEAT_SECONDS + 1.5):
        rig.clock.now = T0 + t
        rig.ex.event(EventType.WARNING, EventReason.BAD_ANNOTATION, "fence: bad")
        rig.ex.event(EventType.WARNING, EventReason.BAD_ANNOTATION, f"other at {t}")
    same = [e for e in rig.events.emitted if e[2] == "fence: bad"]
    assert same == [("Warning", "BadAnnotation", "fence: bad")] * 2  # at 0 and after 30 s, not at 1 or 30
    assert len(rig.events.emitted) == 6


async def test_node_health_changes_are_logged_once():
    rig = Rig()
    await settled_on_l1_0(rig)
    await rig.tick(0.5, l1_0=(False, {}), l1_1=(True, {}))
    await rig.tick(0.6, l1_0=(False, {}), l1_1=(True, {}))
    changes = [m for _, m in rig.log.lines if m.startswith("node ")]
    assert changes == ["node l1-0: new -> up", "node l1-1: new -> up", "node l1-0: up -> suspect"]
