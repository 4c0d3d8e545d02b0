"""The status model (``presence_operator.status``): the one layout both
drivers write, read back into the planner's inputs, and the merge patches
the stores get.  Pure: no Kubernetes, no files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import given
from hypothesis import strategies as hs

from presence_operator import status as st
from presence_operator.health import Health
from presence_operator.planner import (
    Condition, FailoverRecord, Intent, Move, NodeState, Phase, Reason, SetStatus, TagRecord,
)

CRD = yaml.safe_load((Path(__file__).resolve().parents[1] / "crds" / "presenceclusters.yaml").read_text())
STATUS_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
RECORD = FailoverRecord("l1-0", "l1-1", ("vip",), Reason.NODE_DOWN, T0 + 5, 1.234)


def set_status(*, phase: Phase = Phase.READY, owner: str | None = "l1-0", epoch: int = 1, since: float = T0,
               last: FailoverRecord | None = None, count: int = 0) -> SetStatus:
    ready = phase is Phase.READY
    return SetStatus(
        phase=phase,
        conditions={Condition.READY: ready, Condition.DEGRADED: phase is Phase.DEGRADED,
                    Condition.FAILING_OVER: phase is Phase.FAILING_OVER},
        tags={"vip": TagRecord(owner, epoch, since)},
        nodes={"l1-0": (True, ("vip",) if owner == "l1-0" else ()), "l1-1": (ready, ("vip",) if owner == "l1-1" else ())},
        ready_nodes=2 if ready else 1, total_nodes=2, last_failover=last, failover_count=count,
    )


HEALTH = {"l1-0": Health.UP, "l1-1": Health.UP}


def test_render_writes_the_crd_layout_and_the_printer_columns():
    doc = st.render(set_status(), {}, T0, health=HEALTH, fenced=frozenset({"l1-1"}), switchovers={"vip": "l1-0"},
                    pods={"l1-0": "demo-l1-0", "l1-1": "demo-l1-1"}, generation=3)
    assert doc == {
        "observedGeneration": 3,
        "phase": "Ready",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "lastTransitionTime": "2023-11-14T22:13:20.000Z"},
            {"type": "Degraded", "status": "False", "reason": "Ready", "lastTransitionTime": "2023-11-14T22:13:20.000Z"},
            {"type": "FailingOver", "status": "False", "reason": "Ready",
             "lastTransitionTime": "2023-11-14T22:13:20.000Z"},
        ],
        "ready": "2/2", "readyNodes": 2, "totalNodes": 2,
        "tagOwners": "vip=l1-0",
        "nodes": {"l1-0": {"pod": "demo-l1-0", "ready": True, "health": "up", "tags": ["vip"]},
                  "l1-1": {"pod": "demo-l1-1", "ready": True, "health": "up", "tags": []}},
        "tags": {"vip": {"owner": "l1-0", "epoch": 1, "since": "2023-11-14T22:13:20.000Z"}},
        "fenced": ["l1-1"], "switchovers": {"vip": "l1-0"},
        "failoverCount": 0,
    }
    # Local mode has no pods and no generation: the same layout without those two.
    local = st.render(set_status(), {}, T0, health=HEALTH, fenced=frozenset({"l1-1"}), switchovers={"vip": "l1-0"})
    assert "observedGeneration" not in local and all("pod" not in n for n in local["nodes"].values())
    assert {k: v for k, v in doc.items() if k not in ("observedGeneration", "nodes")} == \
           {k: v for k, v in local.items() if k != "nodes"}


def test_render_keeps_transition_times_and_tag_since_while_unchanged():
    first = st.render(set_status(), {}, T0, health=HEALTH)
    same = st.render(set_status(since=T0 + 50), first, T0 + 60, health=HEALTH)
    assert same["conditions"] == first["conditions"] and same["tags"] == first["tags"]
    moved = st.render(set_status(phase=Phase.FAILING_OVER, owner="l1-1", epoch=2, since=0.0), first, T0 + 60,
                      health={"l1-0": Health.DOWN, "l1-1": Health.UP})
    times = {c["type"]: c["lastTransitionTime"] for c in moved["conditions"]}
    assert times == {"Ready": "2023-11-14T22:14:20.000Z", "Degraded": "2023-11-14T22:13:20.000Z",
                     "FailingOver": "2023-11-14T22:14:20.000Z"}
    assert {c["reason"] for c in moved["conditions"]} == {"FailingOver"}
    assert moved["tags"]["vip"] == {"owner": "l1-1", "epoch": 2, "since": "2023-11-14T22:14:20.000Z"}
    assert moved["nodes"]["l1-0"]["health"] == "down" and moved["ready"] == "1/2"


def test_unowned_tag_has_no_owner_member_and_a_dash_in_the_column():
    """A merge patch cannot carry a null member (it removes it), so the
    layout leaves the owner out: both stores then hold the same document."""
    doc = st.render(set_status(owner=None, epoch=0, phase=Phase.DEGRADED), {}, T0, health=HEALTH)
    assert doc["tags"]["vip"] == {"epoch": 0, "since": "2023-11-14T22:13:20.000Z"}
    assert doc["tagOwners"] == "vip=-"
    assert st.observed(doc, T0, {}).tags["vip"].owner is None


def test_last_failover_is_written_with_its_summary_and_never_removed():
    doc = st.render(set_status(last=RECORD, count=1), {"intent": {"x": 1}}, T0 + 5, health=HEALTH)
    assert doc["lastFailover"] == {"from": "l1-0", "to": "l1-1", "tags": ["vip"], "reason": "node-down",
                                   "time": "2023-11-14T22:13:25.000Z", "seconds": 1.234,
                                   "summary": "vip l1-0->l1-1 1.2s (node-down)"}
    assert doc["intent"] == {"x": 1}  # not the status write's business: RecordIntent/ClearIntent own it
    later = st.render(set_status(count=1), doc, T0 + 9, health=HEALTH)
    assert later["lastFailover"] == doc["lastFailover"]
    assert "lastFailover" not in st.render(set_status(), {}, T0, health=HEALTH)


def test_status_reads_back_into_the_planners_inputs():
    intent = Intent((Move("vip", "l1-0", "l1-1", 3, True), Move("t2", None, "l1-0", 7, False)), Reason.SWITCHOVER,
                    T0 + 1.5, T0 + 0.25)
    doc = {**st.render(set_status(last=RECORD, count=4, epoch=2), {}, T0, health=HEALTH),
           "intent": st.intent_to_json(intent)}
    nodes = {"l1-0": NodeState("l1-0", "l1", Health.UP, True)}
    obs = st.observed(doc, T0 + 10, nodes, fenced=frozenset({"l1-1"}), switchovers={"vip": "l1-0"})
    assert obs.now == T0 + 10 and obs.nodes == nodes and obs.fenced == {"l1-1"} and obs.switchovers == {"vip": "l1-0"}
    assert obs.tags == {"vip": TagRecord("l1-0", 2, T0)}
    assert obs.intent == intent and obs.intent.reason is Reason.SWITCHOVER
    assert obs.last_failover == RECORD and obs.failover_count == 4
    assert st.observed({}, T0, {}) == st.observed({}, T0, {}, fenced=frozenset())
    assert st.observed({}, T0, {}).intent is None and st.observed({}, T0, {}).last_failover is None


def test_failover_record_without_source_shows_a_dash_and_reads_back_as_none():
    r = FailoverRecord(None, "l1-0", ("vip",), Reason.FENCED, T0, 0.5)
    d = st.record_to_json(r)
    assert d["from"] == "-" and d["summary"] == "vip -->l1-0 0.5s (fenced)"
    assert st.record_from_json(d) == r and st.record_from_json(None) is None


def _undeclared(schema: dict[str, Any], doc: Any, at: str = "status") -> list[str]:
    """Paths a structural schema does not declare: a real API server prunes them."""
    if isinstance(doc, dict) and schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out = []
        for k, v in doc.items():
            sub = (schema.get("properties") or {}).get(k, schema.get("additionalProperties"))
            out += [f"{at}.{k}"] if not isinstance(sub, dict) else _undeclared(sub, v, f"{at}.{k}")
        return out
    if isinstance(doc, list) and "items" in schema:
        return [p for i, v in enumerate(doc) for p in _undeclared(schema["items"], v, f"{at}[{i}]")]
    return []


def test_every_field_of_the_layout_is_in_the_crd_status_schema():
    """The CRD's schema is structural: an API server drops what it does not
    declare, so a field written only to status.json would silently be lost
    in Kubernetes.  Everything render writes is declared, with its type."""
    intent = Intent((Move("vip", None, "l1-1", 3, False),), Reason.UNOWNED, T0, T0)
    docs = [
        st.render(set_status(last=RECORD, count=1), {}, T0, health={"l1-0": Health.SUSPECT, "l1-1": Health.UNKNOWN},
                  fenced=frozenset({"l1-0"}), switchovers={"vip": "l1-1"}, pods={"l1-0": "p0"}, generation=1),
        {**st.render(set_status(owner=None, phase=Phase.FAILING_OVER), {}, T0, health=HEALTH),
         "intent": st.intent_to_json(intent)},
    ]
    for doc in docs:
        assert _undeclared(STATUS_SCHEMA, doc) == []
        jsonschema.validate(doc, STATUS_SCHEMA)


def test_diff_is_a_merge_patch_of_the_changes_only():
    old = {"phase": "Ready", "switchovers": {"vip": "l1-1"}, "tags": {"vip": {"owner": "l1-0", "epoch": 1}},
           "fenced": ["l1-0", "l1-1"], "intent": {"reason": "fenced"}}
    new = {"phase": "Ready", "switchovers": {}, "tags": {"vip": {"owner": "l1-1", "epoch": 3}}, "fenced": ["l1-1"]}
    patch = st.diff(old, new)
    # A switchover lifted removes its member (patching {} would leave it on the server); lists go whole.
    assert patch == {"switchovers": {"vip": None}, "tags": {"vip": {"owner": "l1-1", "epoch": 3}},
                     "fenced": ["l1-1"], "intent": None}
    assert st.merge(old, patch) == new
    assert st.diff(new, new) == {}


_json = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.text(max_size=3),
    lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(hs.text(max_size=2), inner, max_size=3),
    max_leaves=12,
)


def _no_null_members(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _no_null_members(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_no_null_members(x) for x in v]
    return v


_doc = hs.dictionaries(hs.text(max_size=2), _json, max_size=4).map(_no_null_members)


@given(_doc, _doc)
def test_merge_of_the_diff_gives_the_new_document(old, new):
    """What the store is sent (the diff, applied by the API server) ends as
    what the executor keeps (the new document)."""
    assert st.merge(old, st.diff(old, new)) == new
