"""Manifest builders, table-driven: each mode renders the expected objects,
selectors match the pods they must select, everything carries the owner
reference, node configurations are valid ``presence-node`` configurations
(with, in the federation modes, every other node as a peer at its pod's DNS
name), and no secret value appears anywhere (only Secret names and keys)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from presence_node.config import Config
import kopf

from presence_operator import builders, handlers, nodecheck, spec as specs
from presence_operator.local import launch
from presence_operator.builders import meta, rbac, secret

ROOT = Path(__file__).resolve().parents[1]
DB = {"secretRef": {"name": "db", "key": "dsn"}}


def owner(mode: str, locations: list[dict[str, Any]], **extra: Any) -> builders.Owner:
    s = specs.PresenceClusterSpec.model_validate({"mode": mode, "locations": locations, **extra})
    return builders.Owner("pres", "ns1", "uid-123", s)


CASES = {
    "ha-one-location": (
        owner("ha", [{"name": "l1", "nodes": 2, "database": DB}]),
        {("StatefulSet", "pres-l1"), ("ConfigMap", "pres-l1-config"), ("Service", "pres-l1-nodes"),
         ("Service", "pres-sip-vip"), ("ServiceAccount", "pres-node")},
    ),
    "ha-two-locations": (
        owner("ha", [{"name": "a", "nodes": 2, "database": DB}, {"name": "b", "nodes": 3, "database": DB}]),
        {("StatefulSet", "pres-a"), ("StatefulSet", "pres-b"), ("ConfigMap", "pres-a-config"),
         ("ConfigMap", "pres-b-config"), ("Service", "pres-a-nodes"), ("Service", "pres-b-nodes"),
         ("Service", "pres-sip-vip-a"), ("Service", "pres-sip-vip-b"), ("ServiceAccount", "pres-node")},
    ),
    "load-balancing": (
        owner("loadBalancing", [{"name": "l1", "nodes": 3, "database": DB}]),
        {("StatefulSet", "pres-l1"), ("ConfigMap", "pres-l1-config"), ("Service", "pres-l1-nodes"),
         ("Service", "pres-sip-l1"), ("ServiceAccount", "pres-node")},
    ),
    "federation": (
        owner("federation", [{"name": "east", "nodes": 1}, {"name": "west", "nodes": 2}]),
        {("StatefulSet", "pres-east"), ("StatefulSet", "pres-west"), ("ConfigMap", "pres-east-config"),
         ("ConfigMap", "pres-west-config"), ("Service", "pres-east-nodes"), ("Service", "pres-west-nodes"),
         ("Service", "pres-sip-east"), ("Service", "pres-sip-west"), ("ServiceAccount", "pres-node")},
    ),
    "federation-redundancy": (
        owner("federationRedundancy", [{"name": "east", "nodes": 2, "database": DB},
                                       {"name": "west", "nodes": 2, "database": DB}],
              secretRef={"name": "mine"}, sip={"port": 5070, "serviceType": "LoadBalancer"},
              federationMode="fullSharing"),
        {("StatefulSet", "pres-east"), ("StatefulSet", "pres-west"), ("ConfigMap", "pres-east-config"),
         ("ConfigMap", "pres-west-config"), ("Service", "pres-east-nodes"), ("Service", "pres-west-nodes"),
         ("Service", "pres-sip-east"), ("Service", "pres-sip-west"), ("ServiceAccount", "pres-node")},
    ),
    "federation-tls": (
        owner("federation", [{"name": "east", "nodes": 2}], federationTls={"secretRef": {"name": "channel-tls"}}),
        {("StatefulSet", "pres-east"), ("ConfigMap", "pres-east-config"), ("Service", "pres-east-nodes"),
         ("Service", "pres-sip-east"), ("ServiceAccount", "pres-node")},
    ),
}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def pod_labels(o: builders.Owner, node: specs.NodeSpec, objs: list[dict[str, Any]]) -> dict[str, str]:
    sts = next(s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"] == meta.statefulset_name(o, node.location))
    return dict(sts["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("case", CASES)
def test_each_mode_renders_the_expected_objects(case):
    o, expected = CASES[case]
    objs = builders.render(o)
    assert {(x["kind"], x["metadata"]["name"]) for x in objs} == expected
    assert len(objs) == len(expected)
    for x in objs:
        md = x["metadata"]
        assert md["namespace"] == "ns1"
        assert md["ownerReferences"] == [{"apiVersion": specs.API_VERSION, "kind": "PresenceCluster", "name": "pres",
                                          "uid": "uid-123", "controller": True, "blockOwnerDeletion": True}]
        assert md["labels"][meta.CLUSTER_LABEL] == "pres"
        assert len(md["name"]) <= 63
    json.dumps(objs)  # plain data only


@pytest.mark.parametrize("case", CASES)
def test_statefulsets_and_selectors_match_the_pods(case):
    o, _ = CASES[case]
    objs = builders.render(o)
    for loc in o.spec.locations:
        sts = next(s for s in by_kind(objs, "StatefulSet") if s["metadata"]["name"] == f"pres-{loc.name}")
        assert sts["spec"]["replicas"] == loc.nodes
        assert sts["spec"]["serviceName"] == f"pres-{loc.name}-nodes"
        tmpl = sts["spec"]["template"]["metadata"]["labels"]
        assert selects(sts["spec"]["selector"]["matchLabels"], tmpl)
        # Another location's pods are not selected.
        for other in o.spec.locations:
            if other.name != loc.name:
                assert not selects(sts["spec"]["selector"]["matchLabels"],
                                   {**tmpl, meta.LOCATION_LABEL: other.name})
    nodes = specs.nodes(o.spec)
    headless = {s["metadata"]["name"]: s for s in by_kind(objs, "Service") if s["spec"].get("clusterIP") == "None"}
    for n in nodes:
        selected = [name for name, s in headless.items() if selects(s["spec"]["selector"], pod_labels(o, n, objs))]
        assert selected == [f"pres-{n.location}-nodes"]
    sip = [s for s in by_kind(objs, "Service") if s["spec"].get("clusterIP") != "None"]
    for s in sip:
        assert s["spec"]["type"] == o.spec.sip.service_type
        assert {p["port"] for p in s["spec"]["ports"]} == {o.spec.sip.port}
        assert {p["protocol"] for p in s["spec"]["ports"]} == {"UDP", "TCP"}
    if o.spec.mode == "ha":
        # A SIP Service selects no pod until the operator labels the tag's owner, then exactly that one.
        for t in specs.tags(o.spec):
            svc = next(s for s in sip if s["metadata"]["name"] == meta.sip_service_name(o, t.name))
            assert not any(selects(svc["spec"]["selector"], pod_labels(o, n, objs)) for n in nodes)
            labelled = {n.name: {**pod_labels(o, n, objs), **({meta.owner_label(t.name): "true"} if n.name == t.home else {})}
                        for n in nodes}
            assert [n for n, lab in labelled.items() if selects(svc["spec"]["selector"], lab)] == [t.home]
    else:
        for n in nodes:
            hit = [s["metadata"]["name"] for s in sip if selects(s["spec"]["selector"], pod_labels(o, n, objs))]
            assert hit == [meta.sip_service_name(o, n.location)]


@pytest.mark.parametrize("case", CASES)
def test_configmaps_hold_valid_node_configurations(case, tmp_path):
    o, _ = CASES[case]
    objs = builders.render(o)
    all_tags = specs.tags(o.spec)
    for n in specs.nodes(o.spec):
        cm = next(c for c in by_kind(objs, "ConfigMap") if c["metadata"]["name"] == f"pres-{n.location}-config")
        data = yaml.safe_load(cm["data"][f"node-{n.index}.yaml"])
        cfg = Config.model_validate(data)
        assert cfg.node_id == n.name and cfg.cluster_id == "pres"
        if o.spec.mode == "federation":
            mine = {n.name}  # its own tag only: nothing is shared with the location's other nodes
        else:
            mine = {t.name for t in all_tags if t.location == n.location}
        assert cfg.sharing_tags == {t: "backup" for t in mine}  # the operator activates
        assert cfg.default_tag in mine
        assert str(cfg.admin_secret_file) == "/etc/presence/admin/admin"
        if o.spec.location(n.location).database is not None:
            assert cfg.storage.backend == "postgres" and str(cfg.storage.dsn_file) == "/etc/presence/db/dsn"
        else:
            assert cfg.storage.backend == "memory"
        check_federation(o, n, cfg)


def check_federation(o: builders.Owner, n: specs.NodeSpec, cfg: Config) -> None:
    fed = cfg.federation
    if o.spec.mode not in ("federation", "federationRedundancy"):
        assert not fed.enabled and "federation" not in builders.configmap.node_config(o, n)
        return
    assert fed.mode == {None: "on-demand-sharing", "onDemandSharing": "on-demand-sharing",
                        "fullSharing": "full-sharing"}[o.spec.federation_mode]
    assert fed.listen == "0.0.0.0:7060"
    assert str(fed.secret_file) == "/etc/presence/cluster/cluster"
    # #12.14: TLS files from the spec's Secret, mounted at /etc/presence/cluster-tls.
    tls = (fed.tls_cert_file, fed.tls_key_file, fed.tls_ca_file)
    if o.spec.federation_tls is None:
        assert tls == (None, None, None)
    else:
        assert tuple(map(str, tls)) == tuple(f"/etc/presence/cluster-tls/{k}" for k in ("tls.crt", "tls.key", "ca.crt"))
    # federation: every node its own location; federationRedundancy: the spec location.
    own_location = (lambda x: x.name) if o.spec.mode == "federation" else (lambda x: x.location)
    assert cfg.location == own_location(n)
    others = [x for x in specs.nodes(o.spec) if x.name != n.name]
    assert [(p.id, p.address, p.location) for p in fed.peers] == [
        (x.name, f"pres-{x.location}-{x.index}.pres-{x.location}-nodes.ns1.svc:7060", own_location(x)) for x in others]
    # Each peer's host is its pod, under the headless Service of its location.
    for p, x in zip(fed.peers, others):
        assert p.address.split(".")[:2] == [meta.pod_name(o, x), meta.headless_name(o, x.location)]


@pytest.mark.parametrize("example", ["03-federation", "04-federation-redundancy"])
def test_federation_examples_render_valid_federated_configurations(example):
    from pathlib import Path

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / example / "cluster.yaml").read_text())
    m = specs.load_manifest(doc)
    o = builders.Owner(m.name, "ns1", "uid-1", m.spec)
    cms = by_kind(builders.render(o), "ConfigMap")
    for n in specs.nodes(m.spec):
        cm = next(c for c in cms if c["metadata"]["name"] == meta.configmap_name(o, n.location))
        cfg = Config.model_validate(yaml.safe_load(cm["data"][f"node-{n.index}.yaml"]))
        assert cfg.federation.enabled and len(cfg.federation.peers) == len(specs.nodes(m.spec)) - 1
        assert set(cfg.sharing_tags) == {t.name for t in specs.node_tags(m.spec, n)}


def test_federation_modes_open_the_cluster_port():
    for o, _ in CASES.values():
        objs = builders.render(o)
        federated = o.spec.mode in ("federation", "federationRedundancy")
        for sts in by_kind(objs, "StatefulSet"):
            ports = sts["spec"]["template"]["spec"]["containers"][0]["ports"]
            cluster = [p for p in ports if p["name"] == "cluster"]
            assert cluster == ([{"name": "cluster", "containerPort": 7060, "protocol": "TCP"}] if federated else [])
        for svc in by_kind(objs, "Service"):
            cluster = [p for p in svc["spec"]["ports"] if p["name"] == "cluster"]
            if svc["spec"].get("clusterIP") == "None" and federated:
                assert cluster == [{"name": "cluster", "port": 7060, "targetPort": "cluster", "protocol": "TCP"}]
            else:
                assert cluster == []  # never on the SIP Services


@pytest.mark.parametrize("case", CASES)
def test_secrets_are_mounted_by_reference(case):
    o, _ = CASES[case]
    for sts in by_kind(builders.render(o), "StatefulSet"):
        loc = o.spec.location(sts["metadata"]["labels"][meta.LOCATION_LABEL])
        pod = sts["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["admin-secret"]["secret"] == {"secretName": meta.secret_name(o), "defaultMode": 0o400,
                                                  "items": [{"key": "admin", "path": "admin"}]}
        if o.spec.mode in ("federation", "federationRedundancy"):
            assert vols["cluster-secret"]["secret"] == {"secretName": meta.secret_name(o), "defaultMode": 0o400,
                                                        "items": [{"key": "cluster", "path": "cluster"}]}
            mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
            assert mounts["cluster-secret"] == {"name": "cluster-secret", "mountPath": "/etc/presence/cluster",
                                                "readOnly": True}
        else:
            assert "cluster-secret" not in vols
        if o.spec.federation_tls is not None:
            keys = ["tls.crt", "tls.key", "ca.crt"]
            assert vols["cluster-tls"]["secret"] == {"secretName": o.spec.federation_tls.secret_ref.name, "defaultMode": 0o400,
                                                     "items": [{"key": k, "path": k} for k in keys]}
            mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
            assert mounts["cluster-tls"] == {"name": "cluster-tls", "mountPath": "/etc/presence/cluster-tls", "readOnly": True}
        else:
            assert "cluster-tls" not in vols
        if loc.database is None:
            assert "db" not in vols
        else:
            assert vols["db"]["secret"]["secretName"] == loc.database.secret_ref.name
            assert vols["db"]["secret"]["items"] == [{"key": loc.database.secret_ref.key, "path": "dsn"}]
        assert pod["automountServiceAccountToken"] is False
        env = [e for c in pod["containers"] for e in c.get("env", [])]
        assert not env  # nothing passed by value


def test_no_secret_value_appears_in_any_rendered_object():
    sentinels = ["ADMIN-s3cr3t-value", "CLUSTER-s3cr3t-value", "postgresql://u:pw@db/x"]
    for o, _ in CASES.values():
        rendered = builders.render(o)
        assert not by_kind(rendered, "Secret")
        text = json.dumps(rendered)
        for s in sentinels:
            assert s not in text and base64.b64encode(s.encode()).decode() not in text
        sec = secret.build(o, sentinels[0], sentinels[1])
        assert set(sec["data"]) == {"admin", "cluster"}
        assert sec["metadata"]["name"] == meta.secret_name(o)
        assert sentinels[0] not in json.dumps(sec)  # base64 in data, as the API wants


def test_config_change_rolls_the_pods():
    a = owner("ha", [{"name": "l1", "nodes": 2, "database": DB}])
    b = owner("ha", [{"name": "l1", "nodes": 2, "database": DB}], events=["presence"])
    ann = [by_kind(builders.render(x), "StatefulSet")[0]["spec"]["template"]["metadata"]["annotations"] for x in (a, b)]
    assert ann[0] != ann[1]
    assert ann[0] == by_kind(builders.render(a), "StatefulSet")[0]["spec"]["template"]["metadata"]["annotations"]


def test_operator_rbac_grants_least_verbs():
    sa, role, binding = rbac.operator_rbac("ns1")
    assert (sa["kind"], role["kind"], binding["kind"]) == ("ServiceAccount", "Role", "RoleBinding")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert all("delete" not in v and "*" not in v and "update" not in v for v in verbs.values())
    assert verbs[("", "secrets")] == {"get", "create"}  # never list/watch secrets
    assert verbs[("", "events")] == {"create"}
    # The pods index is kopf's watch (list, watch); the owner label is patched; no get.
    assert verbs[("", "pods")] == {"list", "watch", "patch"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "presence-operator", "namespace": "ns1"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


# -- spec.nodeConfig (issue #13.7) --------------------------------------------

TUNED = {"subscription_expiry": {"min": 30, "default": 600, "max": 7200},
         "publication_expiry": {"min": 10},
         "notify": {"min_interval": 1.0},
         "storage": {"pool_max": 16},
         "federation": {"query_wait": 0.5},
         "log_level": "debug"}


@pytest.mark.parametrize("mode,locations", [
    ("loadBalancing", [{"name": "l1", "nodes": 2, "database": DB}]),
    ("federation", [{"name": "east", "nodes": 1}, {"name": "west", "nodes": 1}]),
])
def test_node_config_reaches_every_node_configuration(mode, locations, tmp_path):
    """The node settings a user tunes in the manifest land in every node's
    configuration, in the ConfigMaps and in local mode alike, next to what
    the operator sets in the same sections."""
    o = owner(mode, locations, nodeConfig=TUNED)
    manifest = specs.Manifest("pres", o.spec)
    for n in specs.nodes(o.spec):
        for data in (builders.configmap.node_config(o, n),
                     launch.node_config(manifest, n, tmp_path, "127.0.0.1:5060", "127.0.0.1:8081",
                                        tmp_path / "dsn" if mode != "federation" else None,
                                        {x.name: "127.0.0.1:7060" for x in specs.nodes(o.spec)})):
            cfg = Config.model_validate(data)
            assert (cfg.subscription_expiry.min, cfg.subscription_expiry.default, cfg.subscription_expiry.max) \
                == (30, 600, 7200)
            assert cfg.publication_expiry.min == 10 and cfg.publication_expiry.max == 3600  # the rest: defaults
            assert cfg.notify.min_interval == 1.0 and cfg.log_level == "debug"
            assert cfg.node_id == n.name  # the operator's keys stay the operator's
            if mode == "federation":
                assert cfg.federation.enabled and cfg.federation.query_wait == 0.5
            else:
                assert cfg.storage.backend == "postgres" and cfg.storage.pool_max == 16


@pytest.mark.parametrize("tuned,why", [
    ({"sip": "0.0.0.0:5070"}, "sip is set by the operator"),
    ({"sharing_tags": {"x": "active"}}, "sharing_tags is set by the operator"),
    ({"storage": {"dsn_file": "/tmp/dsn"}}, "storage.dsn_file is set by the operator"),
    ({"federation": {"peers": []}}, "federation.peers is set by the operator"),
    ({"limits": "many"}, "limits must be a mapping"),
])
def test_node_config_refuses_what_the_operator_sets(tuned, why):
    with pytest.raises(ValueError, match=why):
        owner("ha", [{"name": "l1", "nodes": 2, "database": DB}], nodeConfig=tuned)


@pytest.mark.parametrize("tuned,why", [
    ({"subscription_expiry": {"mins": 30}}, r"spec\.nodeConfig\.subscription_expiry\.mins: Extra inputs"),
    ({"subscription_expiry": {"min": 9000}}, r"spec\.nodeConfig\.subscription_expiry: .*min <= default <= max"),
    ({"notify": {"t1": 0}}, r"spec\.nodeConfig\.notify\.t1: Input should be greater than 0"),
    ({"bogus": 1}, r"spec\.nodeConfig\.bogus: Extra inputs"),
    # #17.2: resource lists are node settings, checked as the admin API checks them.
    ({"resource_lists": {"sip:blf@example.com": ["example.com"]}}, r"spec\.nodeConfig: .*names no user@domain"),
])
def test_node_config_is_checked_against_the_node_model(tuned, why):
    """The operator and local mode refuse a manifest whose node settings the
    nodes would refuse (they would exit 2 and crash-loop), naming the key."""
    o = owner("ha", [{"name": "l1", "nodes": 2, "database": DB}], nodeConfig=tuned)
    with pytest.raises(specs.SpecError, match=why):
        nodecheck.check(o.spec)
    body = {"metadata": {"name": "pres"}, "spec": o.spec.model_dump(by_alias=True, exclude_none=True)}
    with pytest.raises(kopf.PermanentError, match=why):
        handlers.parse_spec(body)


def test_operator_set_keys_are_node_settings():
    """Drift: every key the operator reserves is one the node knows."""
    for dotted in specs.OPERATOR_SET_NODE_KEYS:
        section, _, key = dotted.partition(".")
        assert section in Config.model_fields, dotted
        if key:
            assert key in Config.model_fields[section].annotation.model_fields, dotted


def test_the_node_user_can_read_its_secret_files():
    """#16: Secret files are root's with mode 0400 unless the pod has an
    fsGroup (then the kubelet makes them group-readable): the pod runs as the
    image's user with that user's group as fsGroup (found when the rendered
    pods first ran in containers: the node could not read its DSN)."""
    user = next(line.split()[1] for line in (ROOT / "docker" / "node.Dockerfile").read_text().splitlines()
                if line.startswith("USER "))
    assert user == f"{meta.NODE_UID}:{meta.NODE_UID}"
    for o, _ in CASES.values():
        for sts in by_kind(builders.render(o), "StatefulSet"):
            pod = sts["spec"]["template"]["spec"]
            assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == meta.NODE_UID
            assert any("secret" in v for v in pod["volumes"])
