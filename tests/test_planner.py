"""The failover planner as tables: spec + observed state -> actions, for
every mode and failure case of issue 6; the health detector; the spec
model; and the pure modules' imports (no I/O, no kopf, no asyncio)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence_operator import spec as specs
from presence_operator.health import Health, HealthDetector
from presence_operator.planner import (
    ActivateTag, ClearIntent, Condition, DeactivateTag, Event, EventReason, EventType, Intent, Move, NodeState,
    Observed, Phase, Reason, RecordIntent, SetStatus, TagRecord, plan,
)

UP, DOWN, SUSPECT, UNKNOWN = Health.UP, Health.DOWN, Health.SUSPECT, Health.UNKNOWN
DB = {"database": {"secretRef": {"name": "db", "key": "dsn"}}}


def make_spec(mode: str, *nodes_per_location: int, **extra: Any) -> specs.PresenceClusterSpec:
    locs = []
    for i, n in enumerate(nodes_per_location):
        loc: dict[str, Any] = {"name": f"l{i}", "nodes": n}
        if mode != "federation":
            loc.update(DB)
        locs.append(loc)
    return specs.PresenceClusterSpec.model_validate({"mode": mode, "locations": locs, **extra})


def node(name: str, health: Health = UP, *, reachable: bool | None = None, since: float = 0.0,
         failing: float | None = None, **active: int) -> NodeState:
    loc = name.rsplit("-", 1)[0]
    if reachable is None:
        reachable = health is UP
    return NodeState(name, loc, health, reachable, since, failing, dict(active))


def obs(*nodes: NodeState, now: float = 100.0, **kw: Any) -> Observed:
    return Observed(now=now, nodes={n.name: n for n in nodes}, **kw)


def orders(actions: list) -> list:
    return [a for a in actions if isinstance(a, (ActivateTag, DeactivateTag, RecordIntent, ClearIntent))]


def events(actions: list) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Event)]


def status(actions: list) -> SetStatus:
    (s,) = [a for a in actions if isinstance(a, SetStatus)]
    return s


def intent_of(actions: list) -> Intent:
    (r,) = [a for a in actions if isinstance(a, RecordIntent)]
    return r.intent


HA = make_spec("ha", 2)
LB = make_spec("loadBalancing", 3)


# -- spec -----------------------------------------------------------------------


def test_generated_tags_per_mode():
    assert [(t.name, t.home) for t in specs.tags(HA)] == [("vip", "l0-0")]
    assert [(t.name, t.home) for t in specs.tags(make_spec("ha", 2, 2))] == [("vip-l0", "l0-0"), ("vip-l1", "l1-0")]
    assert [(t.name, t.home) for t in specs.tags(LB)] == [("l0-0", "l0-0"), ("l0-1", "l0-1"), ("l0-2", "l0-2")]
    fed = specs.tags(make_spec("federation", 1, 1))
    assert [(t.name, t.movable) for t in fed] == [("l0-0", False), ("l1-0", False)]
    fr = specs.tags(make_spec("federationRedundancy", 2, 2))
    assert [(t.name, t.home, t.movable) for t in fr] == [("l0", "l0-0", True), ("l1", "l1-0", True)]


def test_federation_mode_defaults_to_on_demand_sharing_in_the_federation_modes():
    fed = make_spec("federation", 1, 1)
    assert fed.federation_mode is None  # the node's on-demand-sharing (spec.federation)
    n0, n1 = specs.nodes(fed)
    section = specs.federation(fed, n0, listen="h:1", address=lambda n: f"{n.name}:2", secret_file="/s")
    assert section == {"mode": "on-demand-sharing", "listen": "h:1", "location": n0.name,
                       "peers": [{"id": n1.name, "address": f"{n1.name}:2", "location": n1.name}], "secret_file": "/s"}
    fr = specs.PresenceClusterSpec.model_validate(
        {"mode": "federationRedundancy", "federationMode": "fullSharing",
         "locations": [{"name": "a", "nodes": 2, **DB}, {"name": "b", "nodes": 2, **DB}]})
    a0 = specs.nodes(fr)[0]
    section = specs.federation(fr, a0, listen="h:1", address=lambda n: n.name, secret_file="/s")
    assert section["mode"] == "full-sharing" and section["location"] == "a"
    assert [(p["id"], p["location"]) for p in section["peers"]] == [("a-1", "a"), ("b-0", "b"), ("b-1", "b")]
    assert specs.federation(HA, specs.nodes(HA)[0], listen="h:1", address=str, secret_file="/s") is None


def test_explicit_tags_default_home_round_robin():
    s = make_spec("loadBalancing", 2, tags=[{"name": "a", "location": "l0"}, {"name": "b", "location": "l0"},
                                           {"name": "c", "location": "l0", "node": "l0-0"}])
    assert [(t.name, t.home) for t in specs.tags(s)] == [("a", "l0-0"), ("b", "l0-1"), ("c", "l0-0")]


@pytest.mark.parametrize("bad, words", [
    ({"mode": "ha", "locations": [{"name": "a", "nodes": 2}]}, "needs a database"),
    ({"mode": "ha", "locations": [{"name": "a", "nodes": 1, **DB}]}, "at least 2 nodes"),
    ({"mode": "federation", "locations": [{"name": "a", "nodes": 1, **DB}]}, "shares no database"),
    ({"mode": "star", "locations": [{"name": "a", "nodes": 1}]}, "mode"),
    ({"mode": "loadBalancing", "locations": [{"name": "a", "nodes": 0, **DB}]}, "greater than or equal to 1"),
    ({"mode": "loadBalancing", "locations": [{"name": "a", "nodes": 2, **DB}, {"name": "a", "nodes": 2, **DB}]},
     "unique"),
    ({"mode": "loadBalancing", "locations": [{"name": "a", "nodes": 2, **DB}],
      "tags": [{"name": "t", "location": "b"}]}, "unknown location"),
    ({"mode": "ha", "locations": [{"name": "a", "nodes": 2, **DB}], "failover": {"policy": "sometimes"}}, "policy"),
    ({"mode": "ha", "locations": [{"name": "a", "nodes": 2, "database": {"dsn": "postgres://u:pw@h/db"}}]}, "dsn"),
    ({"mode": "ha", "locations": [{"name": "a", "nodes": 2, **DB}], "federationMode": "fullSharing"},
     "federationMode is only valid in modes federation and federationRedundancy"),
    ({"mode": "federation", "locations": [{"name": "a", "nodes": 1}], "federationMode": "everything"},
     "federationMode"),
])
def test_invalid_specs_are_refused_naming_the_field(bad, words):
    with pytest.raises(specs.SpecError) as e:
        specs.load_manifest({"apiVersion": specs.API_VERSION, "kind": specs.KIND, "metadata": {"name": "x"},
                             "spec": bad})
    assert words in str(e.value)


# -- health ---------------------------------------------------------------------


def test_one_lost_probe_does_not_judge_down():
    d = HealthDetector(1.0)
    assert d.observe("a", True, 0.0).health is UP
    assert d.observe("a", False, 0.2).health is SUSPECT
    assert d.observe("a", True, 0.4).health is UP
    for t in (0.6, 0.8, 1.0, 1.2, 1.4):
        assert d.observe("a", False, t).health is SUSPECT
    v = d.observe("a", False, 1.6)
    assert v.health is DOWN and v.failing_since == 0.6 and v.since == 1.6 and v.last_ok == 0.4


def test_up_again_after_one_success_and_unknown_until_heard():
    d = HealthDetector(0.5)
    assert d.observe("b", False, 0.0).health is UNKNOWN
    assert d.observe("b", False, 0.4).health is UNKNOWN
    assert d.observe("b", False, 0.5).health is DOWN
    v = d.observe("b", True, 0.7)
    assert v.health is UP and v.since == 0.7 and v.failing_since is None
    assert d.observe("b", True, 0.9).since == 0.7


def test_storage_down_is_kept_for_the_failure_run_and_cleared_by_a_success():
    """#13.3: one probe lost in a database outage (no /readyz answer) does
    not make an alive node with its storage down look dead."""
    d = HealthDetector(1.0)
    d.observe("c", True, 0.0)
    assert d.observe("c", False, 0.2, storage_down=True).storage_down
    assert d.observe("c", False, 0.4).storage_down  # a lost probe
    v = d.observe("c", False, 1.4)
    assert v.health is DOWN and v.storage_down
    assert not d.observe("c", True, 1.6).storage_down
    assert not d.observe("c", False, 1.8).storage_down  # a new run: only its own reports count


# -- HA -------------------------------------------------------------------------


def test_ha_steady_state_does_nothing():
    a = plan(HA, obs(node("l0-0", vip=1), node("l0-1")))
    assert orders(a) == [] and status(a).phase == "Ready"
    assert status(a).tags["vip"] == TagRecord("l0-0", 1, 100.0)


def test_ha_owner_down_moves_vip_with_next_epoch_intent_first():
    a = plan(HA, obs(node("l0-0", DOWN, failing=98.9), node("l0-1"),
                     tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == [
        RecordIntent(Intent((Move("vip", "l0-0", "l0-1", 4, False),), "node-down", 100.0, 98.9)),
        ActivateTag("vip", "l0-1", 4),
    ]
    assert "Failover" in events(a) and status(a).phase == "FailingOver"


def test_reasons_phases_conditions_and_events_are_enum_members():
    """The planner's vocabulary is enums (string values: what status and
    Events show), so the executor and the status model switch on members."""
    a = plan(HA, obs(node("l0-0", DOWN, failing=98.9), node("l0-1"), tags={"vip": TagRecord("l0-0", 3)}))
    assert intent_of(a).reason is Reason.NODE_DOWN
    assert status(a).phase is Phase.FAILING_OVER
    assert list(status(a).conditions) == [Condition.READY, Condition.DEGRADED, Condition.FAILING_OVER]
    evs = [x for x in a if isinstance(x, Event)]
    assert [(e.type, e.reason) for e in evs] == [(EventType.WARNING, EventReason.FAILOVER)]
    assert all(type(e.type) is EventType and type(e.reason) is EventReason for e in evs)


def test_ha_suspect_owner_keeps_its_tag():
    a = plan(HA, obs(node("l0-0", SUSPECT, vip=3), node("l0-1")))
    assert orders(a) == []


def test_ha_down_but_reachable_owner_is_deactivated_first():
    """Draining (readyz 503) yet answering: deactivate, which takes one epoch,
    then activate above it."""
    a = plan(HA, obs(node("l0-0", DOWN, reachable=True, vip=3), node("l0-1")))
    assert orders(a)[1:] == [DeactivateTag("vip", "l0-0"), ActivateTag("vip", "l0-1", 5)]


def test_ha_failover_completes_and_records_time_taken():
    intent = Intent((Move("vip", "l0-0", "l0-1", 4, False),), "node-down", 100.0, 98.9)
    a = plan(HA, obs(node("l0-0", DOWN), node("l0-1", vip=4), now=100.3, intent=intent,
                     tags={"vip": TagRecord("l0-0", 3)}))
    (clear,) = orders(a)
    assert isinstance(clear, ClearIntent) and clear.completed.seconds == pytest.approx(1.4)
    assert clear.completed.tags == ("vip",) and clear.completed.target == "l0-1"
    s = status(a)
    assert s.failover_count == 1 and s.last_failover == clear.completed and s.phase == "Degraded"


def test_first_placement_of_an_unowned_tag_is_not_counted_as_a_failover():
    """A new cluster: every tag starts unowned and is placed on its home
    node; status must not report that as a failover."""
    a = plan(HA, obs(node("l0-0"), node("l0-1")))
    placed = intent_of(a)
    assert placed.reason == "unowned" and ActivateTag("vip", "l0-0", 1) in orders(a)
    done = plan(HA, obs(node("l0-0", vip=1), node("l0-1"), now=100.2, intent=placed))
    s = status(done)
    assert ClearIntent(None) in orders(done)  # no record for the drivers to show as the last failover
    assert s.failover_count == 0 and s.last_failover is None


def test_node_back_failback_never_leaves_tag():
    a = plan(HA, obs(node("l0-0", since=10.0), node("l0-1", vip=4)))
    assert orders(a) == [] and status(a).phase == "Ready"


def test_node_back_failback_automatic_waits_then_returns_home():
    s = make_spec("ha", 2, failover={"failback": "automatic", "detectionSeconds": 2})
    early = plan(s, obs(node("l0-0", since=99.0), node("l0-1", vip=4)))
    assert orders(early) == []  # up for 1 s only: not yet
    a = plan(s, obs(node("l0-0", since=97.0), node("l0-1", vip=4)))
    assert orders(a)[1:] == [DeactivateTag("vip", "l0-1"), ActivateTag("vip", "l0-0", 6)]
    assert intent_of(a).reason == "failback" and "Failback" in events(a)


def test_manual_policy_only_defers():
    s = make_spec("ha", 2, failover={"policy": "manual"})
    a = plan(s, obs(node("l0-0", DOWN), node("l0-1"), tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == [] and events(a) == ["FailoverDeferred"]
    assert status(a).conditions["Degraded"] is True


def test_manual_policy_still_obeys_switchover():
    s = make_spec("ha", 2, failover={"policy": "manual"})
    a = plan(s, obs(node("l0-0", vip=3), node("l0-1"), switchovers={"vip": "l0-1"}))
    assert orders(a)[1:] == [DeactivateTag("vip", "l0-0"), ActivateTag("vip", "l0-1", 5)]
    assert "Switchover" in events(a)


def test_switchover_to_a_down_or_foreign_node_is_rejected():
    a = plan(HA, obs(node("l0-0", vip=3), node("l0-1", DOWN), switchovers={"vip": "l0-1"}))
    assert orders(a) == [] and "SwitchoverRejected" in events(a)
    a = plan(HA, obs(node("l0-0", vip=3), node("l0-1"), switchovers={"vip": "elsewhere-0"}))
    assert orders(a) == [] and "SwitchoverRejected" in events(a)


def test_satisfied_switchover_pins_tag_against_failback():
    s = make_spec("ha", 2, failover={"failback": "automatic"})
    a = plan(s, obs(node("l0-0"), node("l0-1", vip=5), switchovers={"vip": "l0-1"}))
    assert orders(a) == []


def test_fenced_owner_is_vacated_and_fenced_node_never_chosen():
    a = plan(LB, obs(node("l0-0", **{"l0-0": 1}), node("l0-1", **{"l0-1": 1}), node("l0-2", **{"l0-2": 1}),
                     fenced=frozenset({"l0-0"})))
    assert orders(a)[1:] == [DeactivateTag("l0-0", "l0-0"), ActivateTag("l0-0", "l0-1", 3)]
    # l0-1 down too: its tag must not land on the fenced l0-0
    a = plan(LB, obs(node("l0-0"), node("l0-1", DOWN), node("l0-2", **{"l0-0": 3, "l0-2": 1}),
                     fenced=frozenset({"l0-0"}), tags={"l0-1": TagRecord("l0-1", 1)}))
    assert [o for o in orders(a) if isinstance(o, ActivateTag)] == [ActivateTag("l0-1", "l0-2", 2)]


# -- database down, storms --------------------------------------------------------


def test_database_down_all_nodes_unready_defers_without_storm():
    """Every node unready at once (the shared database is gone): no move,
    no deactivation, a deferral and Degraded."""
    # /readyz and /tags both read the database: the nodes answer neither
    a = plan(HA, obs(node("l0-0", DOWN), node("l0-1", DOWN), tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == [] and events(a) == ["FailoverDeferred"]
    s = status(a)
    assert s.phase == "Degraded" and s.conditions["Degraded"] and not s.conditions["Ready"]
    assert s.tags["vip"] == TagRecord("l0-0", 3)  # the record is kept, not cleared
    a = plan(LB, obs(*(node(f"l0-{i}", DOWN) for i in range(3)),
                     tags={f"l0-{i}": TagRecord(f"l0-{i}", 1) for i in range(3)}))
    assert orders(a) == [] and events(a) == ["FailoverDeferred"] * 3


def test_database_back_first_on_the_backup_moves_no_tag():
    """#13.3: the shared database returns and the backup is ready 0.34 s
    before the owner, whose /readyz still says storage-unavailable: not a
    node failure, so vip stays (no new epoch); a StorageUnavailable event
    and Degraded meanwhile."""
    spec = HA.model_copy(update={"failover": specs.Failover(detection_seconds=1)})
    owner = replace(node("l0-0", DOWN, failing=80.0), storage_down=True)
    a = plan(spec, obs(owner, node("l0-1", UP, since=99.66), tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == [] and events(a) == ["StorageUnavailable"]
    assert status(a).phase == "Degraded" and status(a).tags["vip"] == TagRecord("l0-0", 3)
    # Every node alive, every storage down: the same, for every tag.
    a = plan(LB, obs(*(replace(node(f"l0-{i}", DOWN, failing=80.0), storage_down=True) for i in range(3)),
                     tags={f"l0-{i}": TagRecord(f"l0-{i}", 1) for i in range(3)}))
    assert orders(a) == [] and events(a) == ["StorageUnavailable"] * 3


def test_an_owner_alone_without_its_database_is_failed_over():
    """#13.3: the other node has reached the database for detectionSeconds
    of the owner's failure: the fault is the owner's own (its link to the
    database), so vip moves, as for a dead node; a dead process (no
    storage_down) moves at once as before."""
    spec = HA.model_copy(update={"failover": specs.Failover(detection_seconds=1)})
    owner = replace(node("l0-0", DOWN, failing=95.0), storage_down=True)
    a = plan(spec, obs(owner, node("l0-1", UP, since=0.0), tags={"vip": TagRecord("l0-0", 3)}))
    assert [type(x) for x in orders(a)] == [RecordIntent, ActivateTag] and intent_of(a).reason == "node-down"
    # Back before its peer had been up for detectionSeconds: no move ...
    a = plan(spec, obs(owner, node("l0-1", UP, since=99.5), tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == []
    # ... but still failing a full detectionSeconds after the peer came back: moved.
    a = plan(spec, obs(owner, node("l0-1", UP, since=99.0), tags={"vip": TagRecord("l0-0", 3)}))
    assert [m.target for m in intent_of(a).moves] == ["l0-1"]
    a = plan(spec, obs(node("l0-0", DOWN, failing=99.5), node("l0-1", UP, since=99.9),
                       tags={"vip": TagRecord("l0-0", 3)}))
    assert intent_of(a).reason == "node-down"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Health.UP, Health.DOWN, Health.SUSPECT]),
                          st.floats(0, 100), st.floats(0, 100)), min_size=2, max_size=4),
       st.sampled_from(["ha", "loadBalancing", "federationRedundancy"]))
def test_no_node_down_move_away_from_an_owner_whose_whole_location_lost_the_database(nodes_drawn, mode):
    """#13.3, as a property: every node either alive with its storage down
    or back for less than detectionSeconds (5 s) since the owners began to
    fail: no tag moves for node-down, whatever the owners and epochs."""
    spec = make_spec(mode, len(nodes_drawn))
    spec = spec.model_copy(update={"failover": specs.Failover(detection_seconds=5)})
    now = 100.0
    ns = []
    for i, (h, failing, since) in enumerate(nodes_drawn):
        name = f"l0-{i}"
        if h is Health.UP:
            ns.append(NodeState(name, "l0", h, True, max(since, now - 4.9), None, {}))
        else:
            ns.append(NodeState(name, "l0", h, False, failing, min(failing, now - 5.0), {}, True))
    tags = {t.name: TagRecord(f"l0-{i % len(ns)}", 2) for i, t in enumerate(specs.tags(spec))}
    for a in plan(spec, Observed(now, {n.name: n for n in ns}, tags)):
        assert not (isinstance(a, RecordIntent) and a.intent.reason == "node-down")


# -- load balancing -------------------------------------------------------------


def lb_nodes(*health: Health) -> list[NodeState]:
    return [node(f"l0-{i}", h, **({f"l0-{i}": 1} if h is UP else {})) for i, h in enumerate(health)]


LB_TAGS = {f"l0-{i}": TagRecord(f"l0-{i}", 1) for i in range(3)}


def test_lb_node_down_tag_goes_to_least_loaded_survivor():
    a = plan(LB, obs(*lb_nodes(UP, DOWN, UP), tags=LB_TAGS))
    assert [o for o in orders(a) if isinstance(o, ActivateTag)] == [ActivateTag("l0-1", "l0-0", 2)]
    ns = lb_nodes(UP, DOWN, UP)
    ns[0] = node("l0-0", **{"l0-0": 1, "x": 1})  # l0-0 busier: l0-2 takes it
    s = make_spec("loadBalancing", 3, tags=[{"name": n, "location": "l0", "node": n} for n in
                                           ("l0-0", "l0-1", "l0-2")] + [{"name": "x", "location": "l0"}])
    a = plan(s, obs(*ns, tags={**LB_TAGS, "x": TagRecord("l0-0", 1)}))
    assert [o for o in orders(a) if isinstance(o, ActivateTag)] == [ActivateTag("l0-1", "l0-2", 2)]


def test_lb_two_nodes_down_both_tags_on_the_survivor_in_one_intent():
    a = plan(LB, obs(*lb_nodes(DOWN, UP, DOWN), tags=LB_TAGS))
    assert [o for o in orders(a) if isinstance(o, ActivateTag)] == [
        ActivateTag("l0-0", "l0-1", 2), ActivateTag("l0-2", "l0-1", 2)]
    assert len(intent_of(a).moves) == 2


def test_lb_spread_over_survivors_when_tags_pile_up():
    s = make_spec("loadBalancing", 4)
    ns = [node("l0-0", DOWN), node("l0-1", DOWN), node("l0-2", **{"l0-2": 1}), node("l0-3", **{"l0-3": 1})]
    a = plan(s, obs(*ns, tags={"l0-0": TagRecord("l0-0", 1), "l0-1": TagRecord("l0-1", 1)}))
    assert sorted(o.node for o in orders(a) if isinstance(o, ActivateTag)) == ["l0-2", "l0-3"]


# -- federation -----------------------------------------------------------------


def test_federation_node_down_has_no_target_degraded():
    s = make_spec("federation", 1, 1)
    a = plan(s, obs(node("l0-0", DOWN), node("l1-0", **{"l1-0": 1}), tags={"l0-0": TagRecord("l0-0", 1)}))
    assert orders(a) == [] and events(a) == ["FailoverDeferred"] and status(a).phase == "Degraded"


def test_federation_redundancy_fails_over_inside_the_location_only():
    s = make_spec("federationRedundancy", 2, 2)
    a = plan(s, obs(node("l0-0", DOWN), node("l0-1"), node("l1-0", l1=1), node("l1-1"),
                    tags={"l0": TagRecord("l0-0", 2)}))
    assert [o for o in orders(a) if isinstance(o, ActivateTag)] == [ActivateTag("l0", "l0-1", 3)]
    a = plan(s, obs(node("l0-0", DOWN), node("l0-1", DOWN), node("l1-0", l1=1), node("l1-1"),
                    tags={"l0": TagRecord("l0-0", 2)}))
    assert orders(a) == [] and "FailoverDeferred" in events(a)


# -- operator restart mid-failover ------------------------------------------------


INTENT = Intent((Move("vip", "l0-0", "l0-1", 4, False),), "node-down", 100.0, 98.9)


def test_restart_before_order_landed_rolls_forward_with_the_same_epoch():
    a = plan(HA, obs(node("l0-0", DOWN), node("l0-1"), intent=INTENT, tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == [ActivateTag("vip", "l0-1", 4)]  # no new intent, no new epoch
    assert status(a).phase == "FailingOver"


def test_restart_after_order_landed_acts_no_more():
    a = plan(HA, obs(node("l0-0", DOWN), node("l0-1", vip=4), intent=INTENT, tags={"vip": TagRecord("l0-0", 3)}))
    assert [type(o) for o in orders(a)] == [ClearIntent]
    # and the next round (intent cleared, status updated) is quiet
    b = plan(HA, obs(node("l0-0", DOWN), node("l0-1", vip=4), tags={"vip": TagRecord("l0-1", 4)}))
    assert orders(b) == []


def test_restart_with_target_dead_abandons_and_replans_above_the_intent_epoch():
    s = make_spec("ha", 3)
    a = plan(s, obs(node("l0-0", DOWN), node("l0-1", DOWN), node("l0-2"), intent=INTENT,
                    tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a)[0] == ClearIntent(None)
    assert orders(a)[-1] == ActivateTag("vip", "l0-2", 5)  # 4 may have landed on l0-1: never reuse it
    assert "FailoverAbandoned" in events(a)


def test_switchover_intent_resends_deactivation_only_while_source_still_claims():
    it = Intent((Move("vip", "l0-0", "l0-1", 5, True),), "switchover", 100.0, 100.0)
    a = plan(HA, obs(node("l0-0", vip=3), node("l0-1"), intent=it, switchovers={"vip": "l0-1"}))
    assert orders(a) == [DeactivateTag("vip", "l0-0"), ActivateTag("vip", "l0-1", 5)]
    a = plan(HA, obs(node("l0-0"), node("l0-1"), intent=it, switchovers={"vip": "l0-1"},
                     tags={"vip": TagRecord("l0-0", 3)}))
    assert orders(a) == [ActivateTag("vip", "l0-1", 5)]


# -- stale epochs and partitions --------------------------------------------------


def test_stale_epoch_reported_by_a_node_is_deactivated_not_obeyed():
    a = plan(HA, obs(node("l0-0", vip=3), node("l0-1", vip=5), tags={"vip": TagRecord("l0-1", 5)}))
    assert orders(a) == [DeactivateTag("vip", "l0-0")] and events(a) == ["StaleEpoch"]
    assert status(a).tags["vip"].owner == "l0-1"
    # the recorded owner is unreachable but its epoch is higher: still stale
    a = plan(HA, obs(node("l0-0", vip=3), node("l0-1", SUSPECT, reachable=False),
                     tags={"vip": TagRecord("l0-1", 5)}))
    assert orders(a) == [DeactivateTag("vip", "l0-0")] and status(a).tags["vip"].owner == "l0-1"


class World:
    """Nodes each holding their own belief (owner, epoch) of one tag, as if
    no database arbitrated: the strictest setting for the epoch rule."""

    def __init__(self, names: list[str]) -> None:
        self.belief = {n: 0 for n in names}  # epoch at which n believes it owns the tag; 0 = backup
        self.belief[names[0]] = 1

    def apply(self, actions: list, reachable: set[str]) -> None:
        for a in actions:
            if isinstance(a, ActivateTag) and a.node in reachable:
                assert a.epoch > max(self.belief.values())
                self.belief[a.node] = a.epoch
            elif isinstance(a, DeactivateTag) and a.node in reachable:
                self.belief[a.node] = 0

    def owners_by_epoch(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for n, e in self.belief.items():
            if e:
                out.setdefault(e, []).append(n)
        return out


def test_partitioned_node_loses_tag_at_higher_epoch_and_never_shares_an_epoch():
    """l0-0 stays alive believing it owns vip but the operator cannot reach
    it: vip moves to l0-1 at a higher epoch; when the partition heals l0-0 is
    told to give it up.  At no step do two nodes hold one epoch."""
    world = World(["l0-0", "l0-1"])
    rec: dict[str, TagRecord] = {"vip": TagRecord("l0-0", 1)}
    intent = None
    t = 100.0
    phases = [({"l0-0": UP, "l0-1": UP}, {"l0-0", "l0-1"})] * 2 + \
             [({"l0-0": DOWN, "l0-1": UP}, {"l0-1"})] * 4 + [({"l0-0": UP, "l0-1": UP}, {"l0-0", "l0-1"})] * 3
    seen_two_believers = False
    for health, reach in phases:
        ns = [NodeState(n, "l0", health[n], n in reach, 0.0, None,
                        {"vip": world.belief[n]} if world.belief[n] and n in reach else {})
              for n in ("l0-0", "l0-1")]
        actions = plan(HA, Observed(t, {n.name: n for n in ns}, rec, intent))
        world.apply(actions, reach)
        for a in actions:
            if isinstance(a, RecordIntent):
                intent = a.intent
            elif isinstance(a, ClearIntent):
                intent = None
            elif isinstance(a, SetStatus):
                rec = dict(a.tags)
        believers = world.owners_by_epoch()
        assert all(len(v) == 1 for v in believers.values()), believers
        seen_two_believers |= len(believers) == 2
        t += 0.2
    assert seen_two_believers  # the partition really left l0-0 believing (at the lower epoch)
    assert world.owners_by_epoch() == {3: ["l0-1"]} or world.owners_by_epoch() == {2: ["l0-1"]}
    assert rec["vip"].owner == "l0-1"


# -- property: never two activations, never a known epoch ------------------------

HEALTHS = st.sampled_from([UP, DOWN, SUSPECT, UNKNOWN])


@st.composite
def observations(draw):
    mode = draw(st.sampled_from(["ha", "loadBalancing", "federationRedundancy"]))
    n = draw(st.integers(2, 4))
    s = make_spec(mode, n)
    names = [f"l0-{i}" for i in range(n)]
    tags = [t.name for t in specs.tags(s)]
    ns = []
    for name in names:
        h = draw(HEALTHS)
        active = draw(st.dictionaries(st.sampled_from(tags), st.integers(1, 9), max_size=2))
        reach = draw(st.booleans())
        ns.append(NodeState(name, "l0", h, reach, draw(st.floats(0, 100)), None, active if reach else {},
                            draw(st.booleans())))
    rec = {t: TagRecord(draw(st.sampled_from([None, *names])), draw(st.integers(0, 9))) for t in tags}
    fenced = frozenset(draw(st.lists(st.sampled_from(names), max_size=1)))
    sw = draw(st.dictionaries(st.sampled_from(tags), st.sampled_from(names), max_size=1))
    pol = draw(st.sampled_from(["automatic", "manual"]))
    s = s.model_copy(update={"failover": specs.Failover(policy=pol, failback=draw(st.sampled_from(["never", "automatic"])))})
    return s, Observed(100.0, {x.name: x for x in ns}, rec, None, fenced, sw)


@settings(max_examples=300, deadline=None)
@given(observations())
def test_no_plan_makes_two_owners_or_reuses_an_epoch(case):
    s, o = case
    actions = plan(s, o)
    acts = [a for a in actions if isinstance(a, ActivateTag)]
    assert len({a.tag for a in acts}) == len(acts)
    for a in acts:
        known = [o.tags[a.tag].epoch, *(n.active.get(a.tag, 0) for n in o.nodes.values())]
        assert a.epoch > max(known)
        target = o.nodes[a.node]
        assert target.health is UP and a.node not in o.fenced
    if acts:
        first_order = next(i for i, a in enumerate(actions) if isinstance(a, (ActivateTag, DeactivateTag))
                           and not any(isinstance(b, Event) and b.reason == "StaleEpoch" for b in actions[i + 1:i + 2]))
        assert any(isinstance(a, RecordIntent) for a in actions[:first_order])
    assert isinstance(actions[-1], SetStatus)


def test_replace_keeps_the_model_frozen():
    with pytest.raises(Exception):
        HA.mode = "federation"  # type: ignore[misc]
    assert replace(node("l0-0"), health=DOWN).health is DOWN


# -- the CRD agrees with the model ------------------------------------------------

CRD = Path(__file__).resolve().parents[1] / "crds" / "presenceclusters.yaml"


def test_crd_names_enums_and_defaults_match_the_spec_model():
    import typing

    import yaml

    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == specs.GROUP and crd["spec"]["names"]["kind"] == specs.KIND
    assert "pc" not in crd["spec"]["names"]["shortNames"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == specs.VERSION and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:5] == ["Mode", "Ready", "Tags", "Last Failover",
                                                                           "Age"]
    sp = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert sp["properties"]["mode"]["enum"] == list(typing.get_args(specs.Mode))
    fo = sp["properties"]["failover"]["properties"]
    default = specs.Failover()
    assert fo["policy"]["default"] == default.policy and fo["failback"]["default"] == default.failback
    assert fo["detectionSeconds"]["default"] == default.detection_seconds
    assert fo["detectionSeconds"]["minimum"] == specs.Failover.model_fields["detection_seconds"].metadata[0].ge
    assert sp["properties"]["events"]["items"]["enum"] == list(specs.KNOWN_EVENTS)
    assert sp["properties"]["events"]["default"] == list(specs.PresenceClusterSpec.model_fields["events"].default)
    assert len(sp["x-kubernetes-validations"]) >= 5
    # no field of the schema can carry a DSN or a password in clear text
    assert "dsn" not in json_keys(sp) and "password" not in json_keys(sp)


def json_keys(node) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "properties":
                out |= {name.lower() for name in v}
            out |= json_keys(v)
    elif isinstance(node, list):
        for v in node:
            out |= json_keys(v)
    return out


@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[1] / "examples").glob("*/cluster.yaml")),
                         ids=lambda p: p.parent.name)
def test_examples_are_valid_manifests(example):
    import yaml

    m = specs.load_manifest(yaml.safe_load(example.read_text()))
    expected = {"01-ha": "ha", "02-load-balancing": "loadBalancing", "03-federation": "federation",
                "04-federation-redundancy": "federationRedundancy"}
    assert m.spec.mode == expected[example.parent.name]


def test_intent_survives_its_json_form():
    """Both drivers store the intent as JSON (CR status, local state file);
    a restarted driver must read back exactly what was recorded."""
    from presence_operator.status import intent_from_json, intent_to_json

    i = Intent((Move("vip", "l0-0", "l0-1", 4, True), Move("n2", None, "l0-0", 7, False)), "node-down", 100.5, 99.25)
    assert intent_from_json(intent_to_json(i)) == i
    assert intent_from_json(None) is None
