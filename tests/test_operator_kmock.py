"""The kopf operator against KMock's emulator (tests/kube_emulator.py), with real
``presence-node`` processes on 127.0.0.2/127.0.0.3 standing in for pods: the
test creates the pods a StatefulSet controller would and sets their IP and
readiness as a kubelet would; the nodes read the operator's own ConfigMap
(file paths rewritten to the test's directory) and a real PostgreSQL.

Manual operations (switchover and fence annotations) with their Events, and
the safety proofs: a partitioned owner (alive, unreachable from the
operator) loses its tag at a higher epoch while the nodes' own views never
show two owners, then failback per policy; an operator stopped between the
recorded intent and the activation is rolled forward by the next one,
exactly once.

Pods are read from kopf's index (one watch), never listed per probe tick:
a pod whose Ready condition turns False (its node still answering) or that
is deleted is judged down after ``detectionSeconds`` and its tag moves.

Also: invalid PresenceClusters are rejected by the CRD's own schema
(jsonschema) and, for the CEL rules, by the spec model that repeats them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

import kubernetes
from kmock._internal.references import resource
from kube import OperatorThread, eventually, free_port
from pgserver import PostgresServer
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
    (with_spec(federationMode="everything"), "is not one of"),
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
    ("federation-mode-only-federation", "self.mode in ['federation', 'federationRedundancy']",
     with_spec(federationMode="fullSharing"), "only valid in modes federation"),
    ("federation-tls-only-federation", "!has(self.federationTls)",
     with_spec(federationTls={"secretRef": {"name": "tls"}}), "federationTls is only valid in modes federation"),
]


@pytest.mark.parametrize("rule, doc, why", [c[1:] for c in CEL], ids=[c[0] for c in CEL])
def test_cel_rules_hold_in_the_spec_model(rule, doc, why):
    rules = " ".join(r["rule"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"])
    assert rule in rules
    jsonschema.validate(doc, SCHEMA)  # structurally fine: only the CEL rule catches it
    with pytest.raises(specs.SpecError, match=why):
        specs.load_manifest(doc)


# -- manual operations: the annotations ----------------------------------------------------


@pytest.mark.parametrize("annotations, fenced, switchovers, problem", [
    ({}, set(), {}, None),
    ({"presence.example.org/fence": "l1-0", "presence.example.org/switchover": "vip=l1-1"}, {"l1-0"}, {"vip": "l1-1"}, None),
    ({"presence.example.org/fence": " l1-0, l1-1 ", "presence.example.org/switchover": "a=l1-0, b = l1-1"},
     {"l1-0", "l1-1"}, {"a": "l1-0", "b": "l1-1"}, None),
    ({"presence.example.org/switchover": "vip"}, set(), {}, "TAG=NODE"),
    ({"presence.example.org/switchover": "vip=l1-0,vip=l1-1"}, set(), {}, "each tag once"),
    ({"presence.example.org/fence": "l1-0;rm -rf"}, set(), {}, "node names"),
])
def test_manual_operation_annotations_parsed_or_ignored_whole(annotations, fenced, switchovers, problem):
    from presence_operator.handlers import manual_operations

    f, s, problems = manual_operations(annotations)
    assert (f, s) == (fenced, switchovers)
    assert (problem in problems[0]) if problem else not problems


# -- the pods index: what a pod says about its node ---------------------------------------


@pytest.mark.parametrize("status, deleting, ok", [
    ({"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}, False, True),
    ({"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "False"}]}, False, False),
    ({"podIP": "10.0.0.5", "conditions": [{"type": "PodScheduled", "status": "True"}]}, False, False),
    ({"conditions": [{"type": "Ready", "status": "True"}]}, False, False),  # no IP yet
    ({"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}, True, False),  # being deleted
], ids=["ready", "not-ready", "no-ready-condition", "no-ip", "deleting"])
def test_pod_view_and_node_ok(status, deleting, ok):
    from presence_operator.health import node_ok, pod_view

    md = {"name": "demo-ha-l1-0", "labels": {meta.CLUSTER_LABEL: "demo-ha"},
          **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
    view = pod_view({"metadata": md, "status": status})
    assert view.name == "demo-ha-l1-0" and view.labels[meta.CLUSTER_LABEL] == "demo-ha"
    assert node_ok(view, True, True) is ok
    assert view.probe_ip == (None if deleting else status.get("podIP"))
    assert not node_ok(view, False, True) and not node_ok(view, True, False) and not node_ok(None, True, True)


# -- the operator end to end ---------------------------------------------------------------


@pytest.fixture
def cluster(kmock):
    kmock.prepare(NS, CRD)
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


def events(cluster, reason: str | None = None) -> list[dict]:
    return [o.raw for (r, ns, _), o in cluster.objects.items()
            if r == resource("v1/events") and ns == NS and not o.deleted and reason in (None, o.raw.get("reason"))]


class Ha:
    """The HA example running under the operator: two real nodes on
    127.0.0.2/.3 (pods demo-ha-l1-0/1), a real PostgreSQL."""

    def __init__(self, cluster, hosts: list[str], port: int) -> None:
        self.cluster, self.hosts, self.port = cluster, hosts, port
        self.secret = ""
        self.procs: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        return (self.cluster.live(CR, NS, "demo-ha") or {}).get("status") or {}

    async def vip(self, i: int) -> dict[str, Any] | None:
        """The tag ``vip`` as node i reports it (None when it does not answer)."""
        try:
            return (await tags_on(self.port, self.hosts[i], self.secret))["vip"]
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    async def active_on(self, i: int) -> bool:
        return ((await self.vip(i)) or {}).get("state") == "active"

    async def wait_active(self, i: int, timeout: float = 6) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.active_on(i):
            assert asyncio.get_running_loop().time() < deadline, f"vip never active on {self.hosts[i]}"
            await asyncio.sleep(0.05)
        return await self.vip(i)

    def owner_pods(self) -> list[str]:
        return [n for n in ("demo-ha-l1-0", "demo-ha-l1-1")
                if (self.cluster.live("v1/pods", NS, n)["metadata"].get("labels") or {}).get(
                    meta.owner_label("vip")) == "true"]

    async def annotate(self, **annotations: str | None) -> None:
        """``presence.example.org/<key>`` annotations (None removes), as kubectl annotate does."""
        await self.cluster.patch(f"/apis/presence.example.org/v1alpha1/namespaces/{NS}/presenceclusters/demo-ha",
                                 json={"metadata": {"annotations": {f"presence.example.org/{k}": v
                                                                    for k, v in annotations.items()}}})

    async def set_pod_ip(self, i: int, ip: str) -> None:
        await self.cluster.patch(f"/api/v1/namespaces/{NS}/pods/demo-ha-l1-{i}/status",
                                 json={"status": {"podIP": ip}})

    async def set_pod_ready(self, i: int, ready: bool) -> None:
        """The kubelet's Ready condition of pod i (its process left as it is)."""
        await self.cluster.patch(f"/api/v1/namespaces/{NS}/pods/demo-ha-l1-{i}/status",
                                 json={"status": {"conditions": [{"type": "Ready", "status": str(ready)}]}})

    async def timed_vip(self, i: int) -> tuple[float, float, dict[str, Any] | None]:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        v = await self.vip(i)
        return sent, loop.time(), v

    async def monitor(self, violations: list[str], stop: asyncio.Event) -> None:
        """Both nodes' own view of vip every 50 ms, asked at the same moment:
        ``active`` on both at once must never happen.  Two answers of one
        round may straddle a move (the old owner read before it, the new one
        after: different epochs, the lower one asked first); that is not two
        owners.  Two owners is the same epoch on both, or a node claiming a
        lower epoch although it was asked only after the other's higher
        claim had been answered."""
        while not stop.is_set():
            (s0, r0, a), (s1, r1, b) = await asyncio.gather(self.timed_vip(0), self.timed_vip(1))
            if a and b and a["state"] == b["state"] == "active":
                (_, _, lo), (hs, hr, hi) = sorted([(s0, r0, a), (s1, r1, b)], key=lambda x: x[2]["epoch"])
                lo_sent = s0 if lo is a else s1
                if lo["epoch"] == hi["epoch"] or lo_sent > hr:
                    violations.append(f"two owners: {a} {b}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch, **spec_changes: Any):
    """Create the HA example (spec fields overridden by ``spec_changes``) with
    the operator running, play kubelet for its two pods, wait until Ready."""
    hosts = ["127.0.0.2", "127.0.0.3"]
    ha = Ha(cluster, hosts, free_port(hosts))
    monkeypatch.setenv("PRESENCE_OPERATOR_ADMIN_PORT", str(ha.port))  # read by the daemon at start
    dsn = base64.b64encode(pg_dsn.encode()).decode()
    await cluster.post(f"/api/v1/namespaces/{NS}/secrets",
                       json={"metadata": {"name": "demo-ha-db", "namespace": NS}, "data": {"dsn": dsn}})
    await cluster.post(f"/apis/presence.example.org/v1alpha1/namespaces/{NS}/presenceclusters",
                       json={**HA, "metadata": {**HA["metadata"], "namespace": NS},
                             "spec": {**HA["spec"], **spec_changes}})
    cm = await eventually(lambda: cluster.live("v1/configmaps", NS, "demo-ha-l1-config"), 15, "the ConfigMap")
    sec = await eventually(lambda: cluster.live("v1/secrets", NS, "demo-ha-secrets"), 5, "the generated Secret")
    ha.secret = base64.b64decode(sec["data"]["admin"]).decode()

    # Kubelet's part: run the nodes from the operator's ConfigMap, then publish pod IP and readiness.
    (tmp_path / "admin").write_text(ha.secret)
    (tmp_path / "dsn").write_text(pg_dsn)
    async with contextlib.AsyncExitStack() as stack:
        for i, host in enumerate(hosts):
            cfg = yaml.safe_load(cm["data"][f"node-{i}.yaml"])
            cfg.update(admin_secret_file=str(tmp_path / "admin"), state_dir=str(tmp_path / f"state{i}"),
                       log_level="warning", storage={**cfg["storage"], "dsn_file": str(tmp_path / "dsn")})
            cfg.pop("sip"), cfg.pop("admin")
            (tmp_path / f"node{i}.yaml").write_text(yaml.safe_dump(cfg))
            ha.procs[cfg["node_id"]] = await stack.enter_async_context(spawn(
                tmp_path / f"n{i}", "--config", str(tmp_path / f"node{i}.yaml"), env=clean_env(),
                sip=f"{host}:0", admin=f"{host}:{ha.port}"))
            name = f"demo-ha-l1-{i}"
            await cluster.post(f"/api/v1/namespaces/{NS}/pods", json=pod(name, "l1"))
            await cluster.patch(f"/api/v1/namespaces/{NS}/pods/{name}/status", json={"status": {
                "podIP": host, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        await eventually(lambda: ha.status().get("phase") == "Ready" and ha.status()["tags"]["vip"]["owner"],
                         15, "phase Ready")
        await eventually(lambda: ha.owner_pods() == ["demo-ha-l1-0"], 5, "the owner label on l1-0")
        yield ha


async def test_ha_cluster_rendered_then_failover_moves_tag_status_events_and_service(
        cluster, operator, tmp_path, pg_dsn, monkeypatch):
    async with ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch) as ha:
        # Rendered: StatefulSet, Services (headless + SIP following the owner label), ConfigMap, Secret.
        sts = cluster.live("apps/v1/statefulsets", NS, "demo-ha-l1")
        cr = cluster.live(CR, NS, "demo-ha")
        assert sts["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
        assert sts["spec"]["replicas"] == 2
        svc = cluster.live("v1/services", NS, "demo-ha-sip-vip")
        assert svc["spec"]["selector"][meta.owner_label("vip")] == "true"
        assert cluster.live("v1/services", NS, "demo-ha-l1-nodes")["spec"]["clusterIP"] == "None"
        cm = cluster.live("v1/configmaps", NS, "demo-ha-l1-config")
        assert ha.secret not in str(cm) and pg_dsn not in str(cm)

        # The tag is placed on its home (every node starts as backup), and the Service follows.
        st = ha.status()
        assert st["tags"]["vip"]["owner"] == "l1-0" and st["ready"] == "2/2"
        assert await ha.active_on(0)
        # The first placement is no failover: neither shown as the last one nor counted.
        assert st.get("lastFailover") is None and st["failoverCount"] == 0
        count = st["failoverCount"]

        # Kill the owner: the tag moves to the survivor, visible there, in status, in Events, in labels.
        await ha.procs["l1-0"].kill()
        killed = asyncio.get_running_loop().time()
        await ha.wait_active(1, 10)
        took = asyncio.get_running_loop().time() - killed
        assert took < 4, took
        st = (await eventually(lambda: (s := ha.status()).get("lastFailover")
                               and s.get("intent") is None and s, 5, "lastFailover"))
        assert st["tags"]["vip"]["owner"] == "l1-1"
        assert st["lastFailover"]["from"] == "l1-0" and st["lastFailover"]["to"] == "l1-1"
        assert st["lastFailover"]["tags"] == ["vip"] and st["failoverCount"] == count + 1
        assert st["lastFailover"]["reason"] == "node-down" and 0 < st["lastFailover"]["seconds"] < 4
        assert st["tagOwners"] == "vip=l1-1"
        await eventually(lambda: ha.owner_pods() == ["demo-ha-l1-1"], 5, "the owner label moved to l1-1")

        evs = await eventually(lambda: events(cluster, "Failover"), 5, "a Failover Event")
        assert "l1-0 -> l1-1" in evs[0]["message"]
        assert evs[0]["involvedObject"]["name"] == "demo-ha"


async def test_switchover_and_fence_annotations_move_the_tag_with_events(
        cluster, operator, tmp_path, pg_dsn, monkeypatch):
    async with ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch) as ha:
        e0 = (await ha.vip(0))["epoch"]
        count = ha.status()["failoverCount"]

        # kubectl annotate presencecluster demo-ha presence.example.org/switchover=vip=l1-1
        await ha.annotate(switchover="vip=l1-1")
        assert (await ha.wait_active(1, 4))["epoch"] == e0 + 2  # l1-0 deactivated first, then l1-1 above it
        assert not await ha.active_on(0)
        st = await eventually(lambda: ((s := ha.status()).get("lastFailover") or {}).get("reason") == "switchover"
                              and s.get("intent") is None and s, 5, "the switchover recorded")
        assert st["tags"]["vip"]["owner"] == "l1-1" and st["failoverCount"] == count + 1
        await eventually(lambda: ha.owner_pods() == ["demo-ha-l1-1"], 5, "the Service follows the switchover")
        ev = await eventually(lambda: events(cluster, "Switchover"), 5, "a Switchover Event")
        assert "l1-0 -> l1-1" in ev[0]["message"]

        # Fencing the owner vacates it, even against the switchover pin (which is then rejected).
        await ha.annotate(fence="l1-1")
        await ha.wait_active(0, 4)
        await eventually(lambda: (ha.status().get("lastFailover") or {}).get("reason") == "fenced", 5, "the fencing recorded")
        await eventually(lambda: events(cluster, "FencedNodeVacated"), 5, "a FencedNodeVacated Event")
        await eventually(lambda: events(cluster, "SwitchoverRejected"), 5, "the pin to a fenced node rejected")

        # Both fenced: nowhere to go, nothing moves, a deferral Event and Degraded.
        await ha.annotate(fence="l1-0,l1-1", switchover=None)
        ev = await eventually(lambda: [e for e in events(cluster, "FailoverDeferred") if "(fenced)" in e["message"]],
                              5, "a FailoverDeferred Event")
        assert "owner l1-0 is fenced" in ev[0]["message"] and "l1-0 (fenced), l1-1 (fenced)" in ev[0]["message"]
        await eventually(lambda: ha.status()["phase"] == "Degraded", 5, "phase Degraded")
        assert await ha.active_on(0) and ha.status()["tags"]["vip"]["owner"] == "l1-0"

        # A malformed annotation is ignored whole and reported; lifting the fences → Ready again.
        await ha.annotate(fence=None, switchover="vip")
        await eventually(lambda: events(cluster, "BadAnnotation"), 5, "a BadAnnotation Event")
        await eventually(lambda: ha.status()["phase"] == "Ready", 5, "phase Ready")
        assert await ha.active_on(0) and not await ha.active_on(1)


@pytest.mark.parametrize("failback", ["never", "automatic"])
async def test_partitioned_owner_loses_the_tag_at_a_higher_epoch_then_failback_per_policy(
        cluster, operator, tmp_path, pg_dsn, monkeypatch, failback):
    """The owner stays alive and believes nothing happened, but the operator
    cannot reach it (its pod IP now points at a dead address): the tag moves
    with a higher epoch, and the nodes' own views never show two owners."""
    async with ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch,
                          failover={"policy": "automatic", "detectionSeconds": 1, "failback": failback}) as ha:
        violations: list[str] = []
        stop = asyncio.Event()
        mon = asyncio.create_task(ha.monitor(violations, stop))
        try:
            e0 = (await ha.vip(0))["epoch"]
            count = ha.status()["failoverCount"]
            await ha.set_pod_ip(0, "127.0.0.4")  # nothing listens there: the operator's probes fail
            v1 = await ha.wait_active(1, 6)
            assert v1["epoch"] == e0 + 1  # l1-0 unreachable: no deactivation, one epoch above
            assert ha.procs["l1-0"].proc.returncode is None  # still running ...
            v0 = await ha.vip(0)  # ... and asked directly, it now says backup (ownership is in the database)
            assert v0["state"] == "backup" and v0["owner"] == "l1-1" and v0["epoch"] == e0 + 1
            st = await eventually(lambda: (s := ha.status())["failoverCount"] == count + 1 and s, 5, "the failover")
            assert st["lastFailover"]["reason"] == "node-down" and st["tags"]["vip"] == {
                **st["tags"]["vip"], "owner": "l1-1", "epoch": e0 + 1}
            await eventually(lambda: ha.owner_pods() == ["demo-ha-l1-1"], 5, "the Service follows")

            await ha.set_pod_ip(0, ha.hosts[0])  # the partition heals
            if failback == "never":
                await eventually(lambda: ha.status()["readyNodes"] == 2, 5, "l1-0 ready again")
                await asyncio.sleep(2.5)  # well past detectionSeconds
                assert await ha.active_on(1) and not await ha.active_on(0)
                assert ha.status()["failoverCount"] == count + 1
            else:
                v0 = await ha.wait_active(0, 8)
                assert v0["epoch"] == e0 + 3  # l1-1 reachable: deactivated first, then l1-0 above it
                await eventually(lambda: (ha.status().get("lastFailover") or {}).get("reason") == "failback", 5, "failback recorded")
                await eventually(lambda: events(cluster, "Failback"), 5, "a Failback Event")
                await eventually(lambda: ha.owner_pods() == ["demo-ha-l1-0"], 5, "the Service follows back")
        finally:
            stop.set()
            await mon
        assert not violations, violations[:3]


async def test_pod_not_ready_in_the_api_is_judged_down_after_the_detection_threshold_and_its_tag_moves(
        cluster, operator, tmp_path, pg_dsn, monkeypatch):
    """Readiness comes from the API too (the pods index), not only from the
    node's own admin API: the owner's pod turns Ready=False while its
    process still runs and answers; after ``detectionSeconds`` (not before)
    the node is down and the tag moves.  Ready again: the node is back
    (failback never: the tag stays)."""
    async with ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch,
                          failover={"policy": "automatic", "detectionSeconds": 2, "failback": "never"}) as ha:
        e0 = (await ha.vip(0))["epoch"]
        count = ha.status()["failoverCount"]
        loop = asyncio.get_running_loop()
        await ha.set_pod_ready(0, False)
        flipped = loop.time()
        await asyncio.sleep(1.0)  # half the threshold: suspect at most, nothing moved
        assert await ha.active_on(0) and not await ha.active_on(1)
        assert ha.status()["tags"]["vip"]["owner"] == "l1-0" and ha.status()["failoverCount"] == count

        v1 = await ha.wait_active(1, 6)
        assert loop.time() - flipped >= 1.9  # the detection threshold, not the first failed probe
        assert v1["epoch"] > e0
        assert ha.procs["l1-0"].proc.returncode is None  # alive, answering, and no longer the owner
        v0 = await ha.vip(0)
        assert v0 is not None and v0["state"] == "backup" and v0["owner"] == "l1-1"
        st = await eventually(lambda: (s := ha.status())["failoverCount"] == count + 1 and s.get("intent") is None
                              and s, 5, "the failover recorded")
        assert st["lastFailover"]["reason"] == "node-down" and st["lastFailover"]["from"] == "l1-0"
        assert st["tags"]["vip"]["owner"] == "l1-1" and st["nodes"]["l1-0"]["ready"] is False
        assert st["readyNodes"] == 1
        await eventually(lambda: ha.owner_pods() == ["demo-ha-l1-1"], 5, "the Service follows")

        await ha.set_pod_ready(0, True)
        await eventually(lambda: ha.status()["readyNodes"] == 2, 5, "l1-0 ready again")
        assert await ha.active_on(1) and not await ha.active_on(0)
        assert ha.status()["failoverCount"] == count + 1


async def test_database_outage_seen_by_both_nodes_moves_no_tag_whichever_is_ready_first(
        cluster, operator, tmp_path, monkeypatch):
    """#13.3: the location's PostgreSQL stops for 3 s (three times
    detectionSeconds): both pods turn not Ready (the kubelet's readiness is
    /readyz, now 503 storage-unavailable) while their processes run.  It
    returns, the backup is judged up before the owner's pod is Ready: vip
    stays on l1-0 at its epoch (before: moved to l1-1 at a new epoch), with
    a StorageUnavailable event meanwhile."""
    root = Path(tempfile.mkdtemp(prefix="presence-pg-op-"))  # the postgres user must traverse it
    server = PostgresServer(root).start()
    try:
        async with ha_cluster(cluster, tmp_path, server.create_database(), monkeypatch,
                              failover={"policy": "automatic", "detectionSeconds": 1, "failback": "never"}) as ha:
            before = await ha.vip(0)
            count = ha.status()["failoverCount"]
            server.halt()
            await ha.set_pod_ready(0, False)
            await ha.set_pod_ready(1, False)
            await asyncio.sleep(3.0)
            server.resume()
            await eventually(lambda: ha.status()["readyNodes"] == 0, 5, "both nodes seen down")
            await ha.set_pod_ready(1, True)
            # l1-1 judged up by the operator while l1-0 is still down: the
            # moment a node-down failover would be planned.
            await eventually(lambda: ha.status()["nodes"]["l1-1"]["ready"], 5, "l1-1 up first")
            await ha.set_pod_ready(0, True)
            await eventually(lambda: ha.status()["readyNodes"] == 2, 10, "both nodes ready again")
            await asyncio.sleep(2.0)  # twice detectionSeconds: a move would have been made by now
            assert await ha.vip(0) == before and not await ha.active_on(1)
            st = ha.status()
            assert st["failoverCount"] == count and st["tags"]["vip"]["owner"] == "l1-0"
            assert events(cluster, "StorageUnavailable") and not events(cluster, "Failover")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_pods_come_from_a_watch_not_a_list_per_tick_and_a_deleted_pod_is_down(
        cluster, operator, tmp_path, pg_dsn, monkeypatch):
    """The failover daemon reads its pods from kopf's index (one watch), so
    the API server sees no pod LIST per probe tick (~5 per second before).
    A deleted pod leaves the index: its node is down (its process still
    runs) and the tag moves; a pod created again brings the node back."""
    async with ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch) as ha:
        lists, patches = cluster.requests["LIST", "pods"], cluster.requests["UPDATE", "pods"]
        await asyncio.sleep(2.0)  # about ten probe ticks
        assert cluster.requests["LIST", "pods"] - lists <= 1, cluster.requests  # (a re-established watch lists once)
        assert cluster.requests["UPDATE", "pods"] == patches  # the index shows the operator's own owner label
        assert cluster.requests["WATCH", "pods"] >= 1
        assert ha.status()["readyNodes"] == 2

        count = ha.status()["failoverCount"]
        await cluster.delete(f"/api/v1/namespaces/{NS}/pods/demo-ha-l1-0")
        await ha.wait_active(1, 6)
        st = await eventually(lambda: (s := ha.status())["failoverCount"] == count + 1 and s.get("intent") is None
                              and s, 5, "the failover recorded")
        assert st["lastFailover"]["reason"] == "node-down" and st["tags"]["vip"]["owner"] == "l1-1"
        assert ha.procs["l1-0"].proc.returncode is None
        await eventually(lambda: (cluster.live("v1/pods", NS, "demo-ha-l1-1")["metadata"].get("labels") or {}).get(
            meta.owner_label("vip")) == "true", 5, "the Service follows")

        # The StatefulSet controller's part: the pod again, then the kubelet's (IP, Ready).
        await cluster.post(f"/api/v1/namespaces/{NS}/pods", json=pod("demo-ha-l1-0", "l1"))
        await cluster.patch(f"/api/v1/namespaces/{NS}/pods/demo-ha-l1-0/status", json={"status": {
            "podIP": ha.hosts[0], "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        await eventually(lambda: ha.status()["readyNodes"] == 2, 5, "l1-0 back")
        assert await ha.active_on(1) and not await ha.active_on(0)  # failback never
        assert cluster.requests["LIST", "pods"] - lists <= 1, cluster.requests


async def test_operator_restarted_mid_failover_rolls_forward_exactly_once(
        cluster, kubeconfig, tmp_path, pg_dsn, monkeypatch):
    """The operator stops after recording the intent and before the
    activation lands; a new one finishes it with the recorded epoch, once."""
    import presence_operator.handlers  # noqa: F401 - registers the handlers
    from presence_operator.executor import Executor

    original = Executor._activate
    armed, hit = {"on": False}, asyncio.Event()
    loop = asyncio.get_running_loop()

    async def stalls_once(self, a):  # the first operator "dies" inside its activate call
        if armed["on"] and a.node == "l1-1":
            armed["on"] = False
            loop.call_soon_threadsafe(hit.set)
            await asyncio.sleep(3600)  # cancelled when that operator stops
        return await original(self, a)

    monkeypatch.setattr(Executor, "_activate", stalls_once)
    first = OperatorThread(namespaces=[NS], standalone=True)
    await first.__aenter__()
    stopped = False
    try:
        async with ha_cluster(cluster, tmp_path, pg_dsn, monkeypatch) as ha:
            e0 = (await ha.vip(0))["epoch"]
            count = ha.status()["failoverCount"]
            armed["on"] = True
            await ha.procs["l1-0"].kill()
            await asyncio.wait_for(hit.wait(), 6)
            intent = ha.status()["intent"]
            assert intent["reason"] == "node-down" and intent["moves"] == [
                {"tag": "vip", "from": "l1-0", "to": "l1-1", "epoch": e0 + 1, "deactivate": False}]
            await first.__aexit__(None, None, None)
            stopped = True
            assert not await ha.active_on(1) and ha.status()["intent"] == intent  # stopped half-way

            async with OperatorThread(namespaces=[NS], standalone=True):
                v1 = await ha.wait_active(1, 8)
                st = await eventually(lambda: (s := ha.status()).get("intent") is None
                                      and s["failoverCount"] == count + 1 and s, 5, "the intent rolled forward")
                assert v1["epoch"] == e0 + 1 and st["tags"]["vip"]["epoch"] == e0 + 1
                assert st["lastFailover"]["reason"] == "node-down" and st["lastFailover"]["to"] == "l1-1"
                await asyncio.sleep(1.0)  # and nothing more happens
                assert (await ha.vip(1))["epoch"] == e0 + 1 and ha.status()["failoverCount"] == count + 1
                done = [e for e in events(cluster, "FailoverComplete") if "node-down" in e["message"]]
                assert len(done) == 1, done
    finally:
        if not stopped:
            await first.__aexit__(None, None, None)


# -- the cluster Secret -----------------------------------------------------------------------


class _SecretApi:
    def __init__(self, existing: dict[str, Any] | None) -> None:
        self.existing, self.created = existing, []

    async def get(self, p: str) -> dict[str, Any] | None:
        return self.existing

    async def create(self, p: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        return body


@pytest.mark.parametrize("mode", ["ha", "federation"])
def test_ensure_secret_generates_admin_and_cluster_keys(mode):
    import kopf

    from presence_operator import builders
    from presence_operator.handlers import ensure_secret

    doc = yaml.safe_load((ROOT / "examples" / ("01-ha" if mode == "ha" else "03-federation") / "cluster.yaml").read_text())
    owner = builders.Owner(doc["metadata"]["name"], NS, "uid", specs.load_manifest(doc).spec)
    api = _SecretApi(None)
    asyncio.run(ensure_secret(api, owner))
    (sec,) = api.created
    assert set(sec["data"]) == {meta.ADMIN_SECRET_KEY, meta.CLUSTER_SECRET_KEY}
    assert sec["metadata"]["name"] == meta.secret_name(owner)
    # An existing Secret is never changed; without the cluster key, the federation modes wait for it.
    api = _SecretApi({"data": {meta.ADMIN_SECRET_KEY: "eA=="}})
    if mode == "ha":
        asyncio.run(ensure_secret(api, owner))
    else:
        with pytest.raises(kopf.TemporaryError, match="waiting for key 'cluster'"):
            asyncio.run(ensure_secret(api, owner))
    assert not api.created
