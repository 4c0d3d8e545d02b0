"""Packaging: the Helm chart, deploy/ (kustomize), the examples and the
Dockerfiles, checked with the real ``helm`` and ``kubectl`` (tests/k8stools.py:
from the PyPI wheel, cached and hash-checked) and kubernetes-validate.

- ``helm lint --strict``; ``helm template`` with default and non-default
  values, every rendered object validated by kubernetes-validate in strict
  mode (Kubernetes 1.35); custom resources it has no schema for: the
  PresenceCluster CRD's own schema (jsonschema), CNPG's Cluster a structural
  check (its CRD is not vendored here);
- values.schema.json rejects bad values (helm fails), every value is
  documented with ``# --``; the chart's CRD copy equals crds/, its RBAC equals
  builders/rbac.py; deploy/ renders with ``kubectl kustomize`` and equals the
  chart's defaults;
- the four examples pass the CRD schema (and the spec model's CEL rules);
- Dockerfiles: parsed and linted (no container engine on these machines).
The end-to-end path (kubectl apply of the rendered chart to the emulator,
the operator started from the rendered Deployment, failover) is in
tests/test_chart_e2e.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from k8stools import k8s_tools  # noqa: F401 - the session fixture (pytest finds it by this name)

from presence_operator import spec as specs
from presence_operator.local import podman
from presence_operator.builders import rbac

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "sip-presence-operator"
CRD = yaml.safe_load((ROOT / "crds" / "presenceclusters.yaml").read_text())
CR_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
K8S_VERSION = "1.35.0"
NS = "presence-system"
EXAMPLES = sorted(ROOT.glob("examples/*/cluster.yaml"))

NON_DEFAULT = [
    "--set", "operator.watchNamespaces={team-a,team-b}",
    "--set", "operator.logLevel=debug",
    "--set", "operator.extraArgs={--log-format=json}",
    "--set", "operator.extraEnv[0].name=PRESENCE_OPERATOR_ADMIN_PORT",
    "--set-string", "operator.extraEnv[0].value=9081",
    "--set", "image.repository=registry.example.org/presence-operator",
    "--set", "image.tag=1.2.3",
    "--set", "imagePullSecrets[0].name=regcred",
    "--set", "serviceAccount.name=presence-op",
    "--set", "serviceAccount.annotations.example\\.org/role=operator",
    "--set", "crds.create=false",
    "--set", "postgresql.cnpg.enabled=true",
    "--set", "postgresql.cnpg.instances=2",
    "--set", "postgresql.cnpg.storage.storageClass=fast",
    "--set", "nodeSelector.kubernetes\\.io/os=linux",
    "--set", "priorityClassName=presence-critical",
    "--set", "fullnameOverride=presence-op",
]


def run(args: list[Any], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{args[0]} {' '.join(map(str, args[1:4]))}... failed ({r.returncode}):\n{r.stderr}{r.stdout}")
    return r


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def template(tools, *args: str) -> list[dict[str, Any]]:
    return docs(run([tools.helm, "template", "rel", CHART, "--namespace", NS, *args]).stdout)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def validate(obj: dict[str, Any]) -> str:
    """kubernetes-validate (strict) for built-in kinds; our CRD's schema for PresenceClusters."""
    if obj["apiVersion"].startswith(specs.GROUP + "/"):
        jsonschema.validate(obj, CR_SCHEMA)
        return "crd-schema"
    if obj["apiVersion"] == "postgresql.cnpg.io/v1":
        # CNPG's CRD is not vendored: the fields the chart sets, by hand.
        spec = obj["spec"]
        assert obj["kind"] == "Cluster" and isinstance(spec["instances"], int) and spec["instances"] >= 1
        assert set(spec["bootstrap"]["initdb"]) == {"database", "owner"}
        assert re.fullmatch(r"[0-9]+(Ki|Mi|Gi|Ti)?", spec["storage"]["size"])
        return "structural"
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return "kubernetes-validate"


# -- helm --------------------------------------------------------------------------------


def test_helm_lint_strict(k8s_tools):
    out = run([k8s_tools.helm, "lint", "--strict", CHART]).stdout
    assert "0 chart(s) failed" in out
    out = run([k8s_tools.helm, "lint", "--strict", CHART, *NON_DEFAULT]).stdout
    assert "0 chart(s) failed" in out


def test_default_render_is_valid_and_secure(k8s_tools):
    objs = template(k8s_tools)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                            "RoleBinding", "Deployment", "Service", "Pod"]), kinds
    for o in objs:
        assert validate(o) == "kubernetes-validate", o["kind"]
    dep, = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    c, = pod["containers"]
    assert c["command"] == ["presence-operator"]
    assert c["args"] == ["--standalone", f"--namespace={NS}", "--liveness=http://0.0.0.0:8080/healthz"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080}
    assert set(c["resources"]) == {"requests", "limits"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and pod["securityContext"]["runAsNonRoot"]
    assert pod["serviceAccountName"] == "rel-sip-presence-operator"
    # helm test hook: the liveness endpoint through the Service.
    test_pod, = by_kind(objs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "rel-sip-presence-operator.presence-system.svc:8080/healthz" in test_pod["spec"]["containers"][0]["command"][2]
    svc, = by_kind(objs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # Helm conventions: labels from _helpers.tpl on everything.
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "rel" and labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "sip-presence-operator-0.1.0"


def test_non_default_render_is_valid(k8s_tools):
    objs = template(k8s_tools, *NON_DEFAULT)
    how = {f"{o['kind']}/{o['metadata'].get('namespace', '')}": validate(o) for o in objs}
    assert how["Cluster/presence-system"] == "structural"
    assert "CustomResourceDefinition/" not in how  # crds.create=false
    assert sorted(o["metadata"]["namespace"] for o in by_kind(objs, "Role")) == ["team-a", "team-b"]
    for rb in by_kind(objs, "RoleBinding"):
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "presence-op", "namespace": NS}]
    dep, = by_kind(objs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.org/presence-operator:1.2.3"
    assert c["args"] == ["--standalone", "--namespace=team-a", "--namespace=team-b",
                         "--liveness=http://0.0.0.0:8080/healthz", "--debug", "--log-format=json"]
    assert {"name": "PRESENCE_OPERATOR_ADMIN_PORT", "value": "9081"} in c["env"]
    assert dep["metadata"]["name"] == "presence-op"
    cnpg, = by_kind(objs, "Cluster")
    assert cnpg["metadata"]["name"] == "presence-op-db" and cnpg["spec"]["instances"] == 2

    # Cluster-wide: one ClusterRole with both rule sets, --all-namespaces.
    objs = template(k8s_tools, "--set", "rbac.clusterWide=true", "--set", "helmTest.enabled=false")
    for o in objs:
        validate(o)
    assert not by_kind(objs, "Role") and not by_kind(objs, "Pod")
    cr, = by_kind(objs, "ClusterRole")
    assert cr["rules"] == rbac.OPERATOR_CLUSTER_RULES + rbac.OPERATOR_RULES
    assert "--all-namespaces" in by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_notes_name_the_next_commands(k8s_tools):
    out = run([k8s_tools.helm, "install", "rel", CHART, "-n", NS, "--dry-run=client",
               "--set", "postgresql.existingSecret.name=pg", "--set", "postgresql.existingSecret.key=uri"]).stdout
    notes = out[out.index("NOTES:"):]
    assert "kubectl -n presence-system get presenceclusters" in notes
    assert "secretRef: {name: pg, key: uri}" in notes and "demo-ha-secrets" in notes
    assert "helm test rel" in notes
    # The PresenceCluster NOTES.txt prints is valid against the CRD.
    cr = yaml.safe_load(re.search(r"<<'YAML'\n(.*?)\n\s*YAML", notes, re.S).group(1))
    jsonschema.validate(cr, CR_SCHEMA)
    specs.load_manifest(cr)


@pytest.mark.parametrize("args, why", [
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "operator.livenessPort=80"], "livenessPort"),
    (["--set", "operator.livenessPort=oops"], "livenessPort"),
    (["--set", "operator.logLevel=loud"], "logLevel"),
    (["--set", "operator.watchNamespaces={Bad_NS}"], "watchNamespaces"),
    (["--set", "securityContext.readOnlyRootFilesystem=false"], "readOnlyRootFilesystem"),
    (["--set", "securityContext.allowPrivilegeEscalation=true"], "allowPrivilegeEscalation"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
    (["--set", "replicaCount=2"], "replicaCount"),  # typo / unsupported key: additionalProperties false
    (["--set", "crds.create=yes"], "create"),
    (["--set", "postgresql.cnpg.instances=0"], "instances"),
    (["--set", "postgresql.cnpg.storage.size=lots"], "size"),
    (["--set", "postgresql.existingSecret.key=dsn"], "name"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_are_rejected_by_the_schema(k8s_tools, args, why):
    for cmd in (["template", "rel"], ["lint", "--strict"]):
        r = run([k8s_tools.helm, *cmd, CHART, *args], check=False)
        assert r.returncode != 0, f"helm {cmd[0]} accepted {args}"
        assert "schema" in (r.stderr + r.stdout) and why in (r.stderr + r.stdout), r.stderr + r.stdout


def test_cnpg_and_existing_secret_are_exclusive(k8s_tools):
    r = run([k8s_tools.helm, "template", "rel", CHART, "--set", "postgresql.cnpg.enabled=true",
             "--set", "postgresql.existingSecret.name=pg"], check=False)
    assert r.returncode != 0 and "not both" in r.stderr


def test_every_value_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)  # the defaults pass their own schema

    def leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("resources", "podSecurityContext", "securityContext"):
                out += leaves(v, prefix + k + ".")
            else:
                out.append(prefix + k)
        return out

    # Each leaf key is preceded (possibly over several comment lines) by a `# --` comment.
    documented: set[str] = set()
    stack: list[tuple[int, str]] = []
    pending = False
    for line in lines:
        s = line.strip()
        if s.startswith("# --"):
            pending = True
            continue
        if s.startswith("#") or not s:
            continue
        indent = len(line) - len(line.lstrip())
        key = s.split(":", 1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        if pending:
            documented.add(path)
        pending = False
        stack.append((indent, key))
    missing = [k for k in leaves(values) if k not in documented]
    assert not missing, f"values without a `# --` comment: {missing}"
    # And the schema knows every top-level key (additionalProperties: false catches typos).
    assert schema["additionalProperties"] is False and set(values) == set(schema["properties"])


def test_chart_crd_is_the_crds_folder_copy(k8s_tools):
    crd, = by_kind(template(k8s_tools, "--show-only", "templates/crds/presenceclusters.yaml"),
                   "CustomResourceDefinition")
    md = crd["metadata"]
    assert md["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert md.pop("labels") and md.pop("annotations")
    assert crd == CRD, "run scripts/sync-chart-crd.py"
    assert "crd" in (CHART / "README.md").read_text().lower() and "upgrad" in (CHART / "README.md").read_text()


def test_chart_rbac_is_builders_rbac(k8s_tools):
    objs = template(k8s_tools)
    role, = by_kind(objs, "Role")
    cr, = by_kind(objs, "ClusterRole")
    assert role["rules"] == rbac.OPERATOR_RULES
    assert cr["rules"] == rbac.OPERATOR_CLUSTER_RULES
    ours = {r["kind"]: r for r in rbac.operator_rbac(NS)}
    assert ours["Role"]["rules"] == role["rules"]
    assert not any("delete" in r["verbs"] or "*" in r["verbs"] for r in role["rules"] + cr["rules"])


# -- deploy/ (kustomize) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomized(k8s_tools) -> dict[str, list[dict[str, Any]]]:
    return {o: docs(run([k8s_tools.kubectl, "kustomize", ROOT / "deploy" / o]).stdout)
            for o in ("base", "overlays/dev", "overlays/production")}


def test_kustomize_overlays_render_valid_objects(kustomized):
    for name, objs in kustomized.items():
        kinds = sorted(o["kind"] for o in objs)
        assert kinds == sorted(["CustomResourceDefinition", "Namespace", "ServiceAccount", "ClusterRole",
                                "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"]), (name, kinds)
        for o in objs:
            validate(o)
            if o["kind"] not in ("CustomResourceDefinition", "Namespace", "ClusterRole", "ClusterRoleBinding"):
                assert o["metadata"]["namespace"] == NS, (name, o["kind"])
    images = {n: by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
              for n, objs in kustomized.items()}
    assert images == {"base": "presence-operator:0.1.0", "overlays/dev": "presence-operator:dev",
                      "overlays/production": "registry.example.org/sip-presence/presence-operator:0.1.0"}


def test_kustomize_base_equals_chart_defaults(k8s_tools, kustomized):
    chart = template(k8s_tools)
    base = kustomized["base"]
    crd = by_kind(base, "CustomResourceDefinition")[0]
    assert crd["metadata"].pop("labels") == {"app.kubernetes.io/part-of": "sip-presence"} and crd == CRD
    for kind in ("Role", "ClusterRole"):
        assert by_kind(base, kind)[0]["rules"] == by_kind(chart, kind)[0]["rules"]
    cd, bd = by_kind(chart, "Deployment")[0]["spec"], by_kind(base, "Deployment")[0]["spec"]
    assert cd["strategy"] == bd["strategy"] and cd["replicas"] == bd["replicas"]
    cp, bp = cd["template"]["spec"], bd["template"]["spec"]
    assert cp["securityContext"] == bp["securityContext"] and cp["volumes"] == bp["volumes"]
    cc, bc = cp["containers"][0], bp["containers"][0]
    for field in ("command", "args", "env", "ports", "livenessProbe", "resources", "securityContext", "volumeMounts"):
        assert cc[field] == bc[field], field
    assert by_kind(chart, "Service")[0]["spec"]["ports"] == by_kind(base, "Service")[0]["spec"]["ports"]


# -- examples -------------------------------------------------------------------------------


def test_examples_cover_the_four_modes():
    modes = {yaml.safe_load(p.read_text())["spec"]["mode"] for p in EXAMPLES}
    assert modes == {"ha", "loadBalancing", "federation", "federationRedundancy"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.parent.name)
def test_examples_pass_the_crd_schema(path):
    doc = yaml.safe_load(path.read_text())
    jsonschema.validate(doc, CR_SCHEMA)
    specs.load_manifest(doc)  # the CEL rules, repeated by the spec model


def test_federation_redundancy_example_spans_three_locations():
    doc = yaml.safe_load((ROOT / "examples" / "04-federation-redundancy" / "cluster.yaml").read_text())
    m = specs.load_manifest(doc)
    assert len(m.spec.locations) == 3 and all(loc.nodes >= 2 and loc.database for loc in m.spec.locations)
    assert {t.location for t in specs.tags(m.spec)} == {loc.name for loc in m.spec.locations}


# -- Dockerfiles (no container engine here: lint only) ----------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            ins, _, rest = s.partition(" ")
            out.append((ins.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name, healthcheck", [("node", '["presence-node", "healthcheck"]'),
                                              ("operator", "127.0.0.1:8080/healthz")])
def test_dockerfiles_lint(name, healthcheck):
    ins = dockerfile(ROOT / "docker" / f"{name}.Dockerfile")
    known = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "LABEL", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert {i for i, _ in ins} <= known
    froms = [r for i, r in ins if i == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    base = dict(r.split("=", 1) for i, r in ins if i == "ARG" and "=" in r)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base  # slim, patch version pinned
    assert any("--from=build" in r for i, r in ins if i == "COPY")
    users = [r for i, r in ins if i == "USER"]
    assert users and re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", users[-1]), "numeric non-root USER (runAsNonRoot)"
    last_from = max(n for n, (i, _) in enumerate(ins) if i == "FROM")
    assert any(i == "USER" for i, _ in ins[last_from:]), "USER in the final stage"
    hc = [r for i, r in ins if i == "HEALTHCHECK"]
    assert len(hc) == 1 and healthcheck in hc[0] and "CMD" in hc[0]
    installs = [r for i, r in ins if i == "RUN" and "pip install" in r]
    assert installs and all("-c docker/constraints.txt" in r for r in installs)
    # Each image installs its own dependencies only: kopf and the Kubernetes
    # client (the ``operator`` extra) stay out of the node image.
    assert all(("'.[operator]'" in r) == (name == "operator") for r in installs)
    assert json.loads(next(r for i, r in ins if i == "ENTRYPOINT")) == [f"presence-{name}"]


def test_constraints_pin_every_runtime_dependency():
    pins = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    deps += re.search(r"^operator = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    for dep in re.findall(r'"([A-Za-z0-9_.-]+)', deps):
        assert re.sub(r"[-_.]+", "-", dep).lower() in pins, dep


def test_image_names_match_what_is_built():
    """#16: the chart, the manifests and the PresenceCluster default name the
    images ``presence-cluster images`` builds, at the chart's appVersion."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == podman.VERSION
    assert f"localhost/{values['image']['repository']}:{chart['appVersion']}" == podman.OPERATOR_IMAGE
    base = yaml.safe_load((ROOT / "deploy" / "base" / "kustomization.yaml").read_text())
    assert base["images"] == [{"name": "presence-operator", "newTag": podman.VERSION}]
    props = CR_SCHEMA["properties"]["spec"]["properties"]
    assert f"localhost/{props['image']['default']}" == podman.NODE_IMAGE.rsplit(":", 1)[0] + ":latest"
