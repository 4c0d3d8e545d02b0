"""The test emulator's Table rendering (tests/kube_emulator.py): its small jsonPath
evaluator, cells typed as the API server's CRD table convertor types them,
kubectl's age format, and the Accept header it answers. The end-to-end
check with the real kubectl is in test_chart_e2e.py."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import yaml

from kube_emulator import _cell, compile_jsonpath, eval_jsonpath, human_duration, wants_table

ROOT = Path(__file__).resolve().parents[1]
OBJ = {
    "metadata": {"name": "demo", "labels": {"app.kubernetes.io/name": "x"}},
    "spec": {"mode": "ha", "locations": [{"name": "a", "nodes": 2}, {"name": "b", "nodes": 3}]},
    "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Degraded", "status": "True"}],
               "failoverCount": 2, "ready": "1/2"},
}


@pytest.mark.parametrize("path, found", [
    (".spec.mode", ["ha"]),
    ("{.spec.mode}", ["ha"]),
    ("$.status.failoverCount", [2]),
    (".spec.locations[1].nodes", [3]),
    (".spec.locations[-1].name", ["b"]),
    (".spec.locations[*].name", ["a", "b"]),
    (".status.conditions[?(@.type==\"Degraded\")].status", ["True"]),
    (".status.conditions[?(@.type=='Ready')].status", ["False"]),
    (".metadata.labels['app.kubernetes.io/name']", ["x"]),
    (".status.lastFailover.summary", []),
    (".spec.locations[7].name", []),
    (".spec.mode.x", []),
])
def test_jsonpath_evaluator(path, found):
    assert eval_jsonpath(compile_jsonpath(path), OBJ) == found


@pytest.mark.parametrize("path", ["spec.mode", ".spec..mode", ".a[?(@.x>1)]", "", ".a b"])
def test_paths_it_cannot_read_are_refused(path):
    with pytest.raises(ValueError):
        compile_jsonpath(path)


def test_every_printer_column_of_our_crd_compiles():
    crd = yaml.safe_load((ROOT / "crds" / "presenceclusters.yaml").read_text())
    cols = [c for v in crd["spec"]["versions"] for c in v.get("additionalPrinterColumns", [])]
    assert {c["name"] for c in cols} >= {"Mode", "Ready", "Tags", "Last Failover", "Age"}
    for c in cols:
        compile_jsonpath(c["jsonPath"])


@pytest.mark.parametrize("seconds, shown", [
    (-5, "<invalid>"), (-0.5, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (600, "10m"),
    (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (3 * 3600 + 300, "3h5m"), (30 * 3600, "30h"), (50 * 3600, "2d2h"),
    (9 * 86400, "9d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_human_duration_is_kubectls(seconds, shown):
    assert human_duration(seconds) == shown


def test_cells_are_typed_per_column():
    assert _cell("string", []) is None and _cell("string", [None]) is None
    assert _cell("string", ["a", "b"]) == "a" and _cell("string", [3]) == "3" and _cell("string", [True]) == "true"
    assert _cell("integer", [2]) == 2 and _cell("integer", ["2"]) is None and _cell("integer", [True]) is None
    assert _cell("number", [2]) == 2.0 and _cell("boolean", [False]) is False
    ten_min_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=601)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _cell("date", [ten_min_ago]) == "10m" and _cell("date", ["yesterday"]) == "<invalid>"


def test_accept_header_asks_for_a_table():
    kubectl = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
               "application/json")
    assert wants_table({"Accept": kubectl}) == "v1"
    assert wants_table({"accept": "application/json;as=Table;v=v1beta1;g=meta.k8s.io"}) == "v1beta1"
    assert wants_table({"Accept": "application/json"}) is None and wants_table({}) is None
    assert wants_table({"Accept": "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io"}) is None
