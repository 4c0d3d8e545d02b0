"""The kopf operator against KMock's emulator (tests/kube.py), with real
``presence-node`` processes on 127.0.0.2/127.0.0.3 standing in for pods: the
test creates the pods a StatefulSet controller would and sets their IP and
readiness as a kubelet would; the nodes read the operator's own ConfigMap
(file paths rewritten to the test's directory) and a real PostgreSQL.

Also: invalid PresenceClusters are rejected by the CRD's own schema
(jsonschema) and, for the CEL rules, by the spec model that repeats them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import socket
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

import kubernetes
from kmock._internal.references import resource
from kube import ApiEmulator, OperatorThread, eventually
from procs import clean_env, spawn

from presence_operator import spec as specs
from presence_operator.builders import meta

ROOT = Path(__file__).resolve().parents[1]
CRD = yaml.safe_load((ROOT / "crds" / "presenceclusters.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
HA = yaml.safe_load((ROOT / "examples" / "01-ha" / "cluster.yaml").read_text())
CR = "presence.example.org/v1alpha1/presenceclusters"
NS = "ns1"


# -- schema -----------------------------------------------------------------------------


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(HA)
    doc["spec"].update(changes)
    return doc


@pytest.mark.parametrize("doc", [HA, yaml.safe_load((ROOT / "examples" / "02-load-balancing" / "cluster.yaml").read_text())],
                         ids=["ha", "load-balancing"])
def test_examples_pass_the_crd_schema(doc):
    jsonschema.validate(doc, SCHEMA)
    specs.load_manifest(doc)


@pytest.mark.parametrize("doc, why", [
    (with_spec(mode="hot-standby"), "is not one of"),
    (with_spec(locations=[]), "should be non-empty"),
    (with_spec(locations=[{"name": "l1", "nodes": 0}]), "less than the minimum"),
    (with_spec(locations=[{"name": "L_1", "nodes": 2}]), "does not match"),
    (with_spec(locations=[{"nodes": 2}]), "'name' is a required property"),
    (with_spec(failover={"policy": "sometimes"}), "is not one of"),
    (with_spec(failover={"detectionSeconds": 0.01}), "less than the minimum"),
    (with_spec(sip={"port": 70000}), "greater than the maximum"),
    (with_spec(events=["presence", "bogus"]), "is not one of"),
    ({k: v for k, v in HA.items() if k != "spec"}, "'spec' is a required property"),
])
def test_invalid_crs_are_rejected_by_the_crd_schema(doc, why):
    with pytest.raises(jsonschema.ValidationError, match=why):
        jsonschema.validate(doc, SCHEMA)


# The CEL rules (x-kubernetes-validations) are not evaluated by jsonschema:
# each is checked through the spec model, which repeats them, after
# asserting that the CRD still carries the rule.
CEL = [
    ("ha-needs-two-nodes", "l.nodes >= 2", with_spec(locations=[{"name": "l1", "nodes": 1, "database": {"secretRef": {"name": "db"}}}]),
     "at least 2 nodes"),
    ("database-required", "has(l.database)", with_spec(locations=[{"name": "l1", "nodes": 2}]), "needs a database"),
    ("federation-no-database", "!has(l.database)", with_spec(mode="federation"), "shares no database"),
    ("unique-locations", "exists_one", with_spec(locations=[{"name": "a", "nodes": 2, "database": {"secretRef": {"name": "db"}}}] * 2),
     "unique"),
    ("tag-location", "l.name == t.location", with_spec(tags=[{"name": "x", "location": "nowhere"}]), "unknown location"),
    ("federation-no-tags", "self.mode != 'federation'",
     with_spec(mode="federation", locations=[{"name": "a", "nodes": 1}], tags=[{"name": "x", "location": "a"}]),
     "generates its tags"),
]


@pytest.mark.parametrize("rule, doc, why", [c[1:] for c in CEL], ids=[c[0] for c in CEL])
def test_cel_rules_hold_in_the_spec_model(rule, doc, why):
    rules = " ".join(r["rule"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"])
    assert rule in rules
    jsonschema.validate(doc, SCHEMA)  # structurally fine: only the CEL rule catches it
    with pytest.raises(specs.SpecError, match=why):
        specs.load_manifest(doc)


# -- the operator end to end ---------------------------------------------------------------


@pytest.fixture
def kmock_options():
    return {"cls": ApiEmulator}


@pytest.fixture
def cluster(kmock):
    with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        kmock.resources.load_bundled()
    kmock.register_crd(CRD)
    kmock.put("v1/namespaces", None, {"metadata": {"name": NS}})
    return kmock


@pytest.fixture
def kubeconfig(cluster, tmp_path, monkeypatch):
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "t",
           "clusters": [{"name": "t", "cluster": {"server": str(cluster.url).rstrip("/")}}],
           "users": [{"name": "t", "user": {"token": "t"}}],
           "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(p))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(p))
    return p


def free_port(hosts: list[str]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for h in hosts[1:]:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue


@pytest.fixture
async def operator(cluster, kubeconfig, monkeypatch):
    import presence_operator.handlers  # noqa: F401 - registers the handlers

    async with OperatorThread(namespaces=[NS], standalone=True) as op:
        yield op


async def tags_on(port: int, host: str, secret: str) -> dict[str, dict]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as s:
        async with s.get(f"http://{host}:{port}/tags", timeout=aiohttp.ClientTimeout(total=1)) as r:
            return {t["tag"]: t for t in (await r.json())["items"]}


def pod(name: str, location: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {meta.CLUSTER_LABEL: "demo-ha", meta.LOCATION_LABEL: location}},
            "spec": {"containers": [{"name": "node", "image": "presence-node:latest"}]}}


async def test_ha_cluster_rendered_then_failover_moves_tag_status_events_and_service(
        cluster, operator, tmp_path, pg_dsn, monkeypatch):
    hosts = ["127.0.0.2", "127.0.0.3"]
    port = free_port(hosts)
    monkeypatch.setenv("PRESENCE_OPERATOR_ADMIN_PORT", str(port))  # read by the daemon at start
    dsn = base64.b64encode(pg_dsn.encode()).decode()
    await cluster.post(f"/api/v1/namespaces/{NS}/secrets",
                       json={"metadata": {"name": "demo-ha-db", "namespace": NS}, "data": {"dsn": dsn}})
    await cluster.post(f"/apis/presence.example.org/v1alpha1/namespaces/{NS}/presenceclusters",
                       json={**HA, "metadata": {**HA["metadata"], "namespace": NS}})

    # Rendered: StatefulSet, Services (headless + SIP following the owner label), ConfigMap, Secret.
    sts = await eventually(lambda: cluster.live("apps/v1/statefulsets", NS, "demo-ha-l1"), 15, "the StatefulSet")
    cr = cluster.live(CR, NS, "demo-ha")
    assert sts["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
    assert sts["spec"]["replicas"] == 2
    svc = await eventually(lambda: cluster.live("v1/services", NS, "demo-ha-sip-vip"), 5, "the SIP Service")
    assert svc["spec"]["selector"][meta.owner_label("vip")] == "true"
    assert cluster.live("v1/services", NS, "demo-ha-l1-nodes")["spec"]["clusterIP"] == "None"
    cm = await eventually(lambda: cluster.live("v1/configmaps", NS, "demo-ha-l1-config"), 5, "the ConfigMap")
    sec = await eventually(lambda: cluster.live("v1/secrets", NS, "demo-ha-secrets"), 5, "the generated Secret")
    admin_secret = base64.b64decode(sec["data"]["admin"]).decode()
    assert admin_secret not in str(cm) and pg_dsn not in str(cm)

    # Kubelet's part: run the nodes from the operator's ConfigMap, then publish pod IP and readiness.
    (tmp_path / "admin").write_text(admin_secret)
    (tmp_path / "dsn").write_text(pg_dsn)
    procs = {}
    async with contextlib.AsyncExitStack() as stack:
        for i, host in enumerate(hosts):
            cfg = yaml.safe_load(cm["data"][f"node-{i}.yaml"])
            cfg.update(admin_secret_file=str(tmp_path / "admin"), state_dir=str(tmp_path / f"state{i}"),
                       log_level="warning", storage={**cfg["storage"], "dsn_file": str(tmp_path / "dsn")})
            cfg.pop("sip"), cfg.pop("admin")
            (tmp_path / f"node{i}.yaml").write_text(yaml.safe_dump(cfg))
            procs[cfg["node_id"]] = await stack.enter_async_context(spawn(
                tmp_path / f"n{i}", "--config", str(tmp_path / f"node{i}.yaml"), env=clean_env(),
                sip=f"{host}:0", admin=f"{host}:{port}"))
            name = f"demo-ha-l1-{i}"
            await cluster.post(f"/api/v1/namespaces/{NS}/pods", json=pod(name, "l1"))
            await cluster.patch(f"/api/v1/namespaces/{NS}/pods/{name}/status", json={"status": {
                "podIP": host, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})

        # The tag is placed on its home (every node starts as backup), and the Service follows.
        await eventually(lambda: (cluster.live(CR, NS, "demo-ha").get("status") or {}).get("phase") == "Ready",
                         15, "phase Ready")
        st = cluster.live(CR, NS, "demo-ha")["status"]
        assert st["tags"]["vip"]["owner"] == "l1-0" and st["ready"] == "2/2"
        assert (await tags_on(port, hosts[0], admin_secret))["vip"]["state"] == "active"
        # The first placement is itself recorded by the planner (reason "unowned").
        assert st["lastFailover"]["reason"] == "unowned" and st["lastFailover"]["to"] == "l1-0"
        count = st["failoverCount"]
        owner_pods = lambda: [n for n in ("demo-ha-l1-0", "demo-ha-l1-1")  # noqa: E731
                              if (cluster.live("v1/pods", NS, n)["metadata"].get("labels") or {}).get(
                                  meta.owner_label("vip")) == "true"]
        await eventually(lambda: owner_pods() == ["demo-ha-l1-0"], 5, "the owner label on l1-0")

        # Kill the owner: the tag moves to the survivor, visible there, in status, in Events, in labels.
        await procs["l1-0"].kill()
        killed = asyncio.get_running_loop().time()

        async def moved() -> bool:
            try:
                return (await tags_on(port, hosts[1], admin_secret))["vip"]["state"] == "active"
            except aiohttp.ClientError:
                return False

        while not await moved():
            assert asyncio.get_running_loop().time() - killed < 10, "vip never moved"
            await asyncio.sleep(0.05)
        took = asyncio.get_running_loop().time() - killed
        assert took < 4, took
        st = (await eventually(lambda: (s := cluster.live(CR, NS, "demo-ha")["status"]).get("lastFailover")
                               and s.get("intent") is None and s, 5, "lastFailover"))
        assert st["tags"]["vip"]["owner"] == "l1-1"
        assert st["lastFailover"]["from"] == "l1-0" and st["lastFailover"]["to"] == "l1-1"
        assert st["lastFailover"]["tags"] == ["vip"] and st["failoverCount"] == count + 1
        assert st["lastFailover"]["reason"] == "node-down" and 0 < st["lastFailover"]["seconds"] < 4
        assert st["tagOwners"] == "vip=l1-1"
        await eventually(lambda: owner_pods() == ["demo-ha-l1-1"], 5, "the owner label moved to l1-1")

        def events() -> list[dict]:
            return [o.raw for (r, ns, _), o in cluster.objects.items()
                    if r == resource("v1/events") and ns == NS and not o.deleted]
        evs = await eventually(lambda: [e for e in events() if e.get("reason") == "Failover"], 5, "a Failover Event")
        assert "l1-0 -> l1-1" in evs[0]["message"]
        assert evs[0]["involvedObject"]["name"] == "demo-ha"

