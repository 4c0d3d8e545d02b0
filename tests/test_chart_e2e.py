"""From the Helm chart to a failover, through ``kubectl``, on KMock's emulator.

``helm template`` renders the chart (the path ``helm install`` takes, minus
the release bookkeeping); ``kubectl apply --server-side=false
--validate=false -f -`` sends it to the emulator of tests/kube_emulator.py (the
emulator serves no /openapi, hence ``--validate=false``; the CRD POST
registers the resource). The operator is then started as a process from the
applied Deployment's ``command`` and ``args`` (``presence-operator
--standalone --namespace=presence-system --liveness=...``: the liveness
port is rendered as a free local port through ``operator.livenessPort``) and
its liveness endpoint is checked as the chart's ``helm test`` Pod does. The
HA example is applied with ``kubectl``; real ``presence-node`` processes on
127.0.0.2/127.0.0.3 stand in for the pods (the test creates the pods and
sets their IP and readiness, as the StatefulSet controller and the kubelet
would). The owner's node is killed and the tag's move is observed with
``kubectl get presenceclusters`` (its printer columns, plain and ``-o
wide``, before and after) and ``kubectl wait``.

The printer columns are rendered by the test emulator, not by a real API
server: tests/kube_emulator.py answers kubectl's ``as=Table`` requests with a
``meta.k8s.io/v1`` Table built from the applied CRD's own
``additionalPrinterColumns``, evaluating their jsonPaths as the API
server's CRD table convertor does. What this proves is that the CRD's
columns read the status fields the operator writes, and what kubectl
prints from them; the same fields are also read through ``-o jsonpath``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from k8stools import k8s_tools  # noqa: F401 - the session fixture (pytest finds it by this name)
from kube import eventually, free_port
from procs import clean_env, spawn

from presence_operator.builders import meta

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "sip-presence-operator"
NS = "presence-system"
CR = "presence.example.org/v1alpha1/presenceclusters"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def cluster(kmock):
    kmock.prepare(NS)
    return kmock  # no register_crd(): kubectl applies the chart's CRD


@pytest.fixture
def kubectl(cluster, k8s_tools, tmp_path):
    home = tmp_path / "home"  # kubectl's discovery cache
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "t",
           "clusters": [{"name": "t", "cluster": {"server": str(cluster.url).rstrip("/")}}],
           "users": [{"name": "t", "user": {"token": "t"}}],
           "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": NS}}]}
    home.mkdir()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(cfg))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(kubeconfig)}

    async def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
        # Never subprocess.run: the emulator serves from this test's event loop.
        p = await asyncio.create_subprocess_exec(
            str(k8s_tools.kubectl), *args, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(stdin.encode() if stdin else None), 30)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {p.returncode}\n{err.decode()}")
        return out.decode()

    run.kubeconfig = kubeconfig  # type: ignore[attr-defined]
    return run


async def helm_template(tools, *args: str) -> str:
    p = await asyncio.create_subprocess_exec(str(tools.helm), "template", "presence", str(CHART), "--namespace", NS,
                                             *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await p.communicate()
    assert p.returncode == 0, err.decode()
    return out.decode()


@contextlib.asynccontextmanager
async def operator_from(deployment: dict[str, Any], kubeconfig: Path, workdir: Path, **env: str):
    """Run the Deployment's container command and args as a local process."""
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    exe = shutil.which(c["command"][0], path=str(BIN))
    assert exe, f"{c['command'][0]} not installed in {BIN}"
    workdir.mkdir(parents=True, exist_ok=True)
    e = clean_env(KUBECONFIG=str(kubeconfig), HOME=str(workdir), **env)
    e.update({v["name"]: v["value"] for v in c.get("env", [])})
    log = workdir / "operator.log"
    with log.open("wb") as f:
        proc = await asyncio.create_subprocess_exec(exe, *c["command"][1:], *c.get("args", []),
                                                    env=e, cwd=workdir, stdout=f, stderr=f)
    try:
        yield proc, log
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def healthz(port: int) -> int | None:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


async def tags_on(port: int, host: str, secret: str) -> dict[str, dict]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as s:
        async with s.get(f"http://{host}:{port}/tags", timeout=aiohttp.ClientTimeout(total=1)) as r:
            return {t["tag"]: t for t in (await r.json())["items"]}


async def until(check, timeout: float, what: str):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        v = await check()
        if v:
            return v
        assert asyncio.get_running_loop().time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.1)


async def test_helm_chart_to_failover_through_kubectl(cluster, kubectl, k8s_tools, tmp_path, pg_dsn):
    live_port = free_port(["127.0.0.1"])
    rendered = await helm_template(k8s_tools, "--skip-tests", "--set", f"operator.livenessPort={live_port}")
    out = await kubectl("apply", "--server-side=false", "--validate=false", "-f", "-", stdin=rendered)
    for what in ("customresourcedefinition.apiextensions.k8s.io/presenceclusters.presence.example.org created",
                 "serviceaccount/presence-sip-presence-operator created",
                 "clusterrole.rbac.authorization.k8s.io/presence-sip-presence-operator created",
                 "role.rbac.authorization.k8s.io/presence-sip-presence-operator created",
                 "deployment.apps/presence-sip-presence-operator created"):
        assert what in out, out
    assert "presenceclusters" in await kubectl("api-resources", "--api-group=presence.example.org")
    dep = cluster.live("apps/v1/deployments", NS, "presence-sip-presence-operator")
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["presence-operator"]

    hosts = ["127.0.0.2", "127.0.0.3"]
    admin_port = free_port(hosts)
    async with contextlib.AsyncExitStack() as stack:
        op, log = await stack.enter_async_context(operator_from(
            dep, kubectl.kubeconfig, tmp_path / "operator", PRESENCE_OPERATOR_ADMIN_PORT=str(admin_port)))
        # What the chart's `helm test` Pod checks: the liveness endpoint answers.
        await until(lambda: _ok(healthz(live_port), op, log), 20, "the operator's /healthz")

        # (`kubectl create secret` sends protobuf, which the emulator cannot read: apply a manifest.)
        dsn = base64.b64encode(pg_dsn.encode()).decode()
        await kubectl("apply", "--server-side=false", "--validate=false", "-f", "-", stdin=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-ha-db"}, "data": {"dsn": dsn}}))
        assert "presencecluster.presence.example.org/demo-ha created" in await kubectl(
            "apply", "--server-side=false", "--validate=false", "-f", str(ROOT / "examples" / "01-ha" / "cluster.yaml"))
        await eventually(lambda: cluster.live("apps/v1/statefulsets", NS, "demo-ha-l1"), 20, "the StatefulSet")
        cm = await eventually(lambda: cluster.live("v1/configmaps", NS, "demo-ha-l1-config"), 5, "the ConfigMap")
        sec = await eventually(lambda: cluster.live("v1/secrets", NS, "demo-ha-secrets"), 5, "the generated Secret")
        admin_secret = base64.b64decode(sec["data"]["admin"]).decode()

        # Kubelet's part: nodes from the operator's ConfigMap, pods with IP and readiness.
        (tmp_path / "admin").write_text(admin_secret)
        (tmp_path / "dsn").write_text(pg_dsn)
        procs = {}
        for i, host in enumerate(hosts):
            cfg = yaml.safe_load(cm["data"][f"node-{i}.yaml"])
            cfg.update(admin_secret_file=str(tmp_path / "admin"), state_dir=str(tmp_path / f"state{i}"),
                       log_level="warning", storage={**cfg["storage"], "dsn_file": str(tmp_path / "dsn")})
            cfg.pop("sip"), cfg.pop("admin")
            (tmp_path / f"node{i}.yaml").write_text(yaml.safe_dump(cfg))
            procs[cfg["node_id"]] = await stack.enter_async_context(spawn(
                tmp_path / f"n{i}", "--config", str(tmp_path / f"node{i}.yaml"), env=clean_env(),
                sip=f"{host}:0", admin=f"{host}:{admin_port}"))
            name = f"demo-ha-l1-{i}"
            await cluster.post(f"/api/v1/namespaces/{NS}/pods", json={
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS,
                             "labels": {meta.CLUSTER_LABEL: "demo-ha", meta.LOCATION_LABEL: "l1"}},
                "spec": {"containers": [{"name": "node", "image": "presence-node:latest"}]}})
            await cluster.patch(f"/api/v1/namespaces/{NS}/pods/{name}/status", json={"status": {
                "podIP": host, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})

        # Observed through kubectl: the tag on its home node, both nodes ready.
        await kubectl("wait", "presenceclusters/demo-ha", "--for=jsonpath={.status.phase}=Ready", "--timeout=20s")
        cols = "{.status.ready} {.status.tagOwners}"
        assert (await kubectl("get", "presenceclusters", "demo-ha", "-o", f"jsonpath={cols}")) == "2/2 vip=l1-0"
        # The tag's first placement is no failover: no LAST FAILOVER yet.
        row = await columns(kubectl)
        assert row == {"NAME": "demo-ha", "MODE": "ha", "READY": "2/2", "TAGS": "vip=l1-0",
                       "LAST FAILOVER": "", "AGE": "<age>"}, row
        assert await columns(kubectl, "-o", "wide") == {**row, "PHASE": "Ready", "FAILOVERS": "0"}
        assert (await tags_on(admin_port, hosts[0], admin_secret))["vip"]["state"] == "active"

        # Kill the owner: kubectl sees the tag move to l1-1.
        await procs["l1-0"].kill()
        killed = asyncio.get_running_loop().time()
        await kubectl("wait", "presenceclusters/demo-ha", "--for=jsonpath={.status.tags.vip.owner}=l1-1",
                      "--timeout=15s")
        took = asyncio.get_running_loop().time() - killed
        assert took < 6, took  # kubectl's own start and watch included
        out = await kubectl("get", "presenceclusters", "demo-ha", "-o",
                            "jsonpath={.status.tagOwners}|{.status.lastFailover.from}|{.status.lastFailover.to}|"
                            "{.status.lastFailover.reason}")
        assert out == "vip=l1-1|l1-0|l1-1|node-down", out
        summary = re.compile(r"vip l1-0->l1-1 \d+\.\ds \(node-down\)")
        row = await columns(kubectl, "demo-ha")  # a get of one object is a Table too
        assert row == {"NAME": "demo-ha", "MODE": "ha", "READY": "1/2", "TAGS": "vip=l1-1",
                       "LAST FAILOVER": row["LAST FAILOVER"], "AGE": "<age>"}, row
        assert summary.fullmatch(row["LAST FAILOVER"]), row
        wide = await columns(kubectl, "-o", "wide")
        assert {k: wide[k] for k in ("READY", "TAGS", "PHASE", "FAILOVERS")} == {
            "READY": "1/2", "TAGS": "vip=l1-1", "PHASE": "Degraded", "FAILOVERS": "1"}, wide
        assert summary.fullmatch(wide["LAST FAILOVER"]), wide
        assert (await tags_on(admin_port, hosts[1], admin_secret))["vip"]["state"] == "active"
        assert op.returncode is None, log.read_text()[-3000:]


async def columns(kubectl, *args: str) -> dict[str, str]:
    """``kubectl get presenceclusters [ARGS]``: the one row by column header,
    cut at the headers' offsets (kubectl left-aligns its columns; an absent
    value is an empty cell). An AGE of seconds (this test's object is young)
    reads ``<age>``."""
    out = await kubectl("get", "presenceclusters", *args)
    lines = out.splitlines()
    assert len(lines) == 2, out
    head, row = lines
    names = re.split(r" {2,}", head.strip())
    starts = [head.index(n) for n in names] + [None]
    got = {n: row[starts[i]:starts[i + 1]].strip() for i, n in enumerate(names)}
    if re.fullmatch(r"\d+s", got.get("AGE", "")):
        got["AGE"] = "<age>"
    return got


async def _ok(status_coro, proc, log: Path) -> bool:
    assert proc.returncode is None, f"the operator exited {proc.returncode}:\n{log.read_text()[-3000:]}"
    return await status_coro == 200
