"""The container images, built and run for real (issue #16) with a private
podman (``presence_operator.local.podman``: runc, cgroupfs, host network, a
base image made from Debian's packages with mmdebstrap; its storage is
cached in ``~/.cache/presence-images`` across runs).

- the node image, as non-root uid 10001, answers ``/healthz``, SIP over UDP
  and TCP, passes its HEALTHCHECK while listening on other ports than the
  image's defaults, logs its ready line as JSON, and exits 0 after draining
  on SIGTERM; it carries neither kopf nor the Kubernetes client;
- the operator image runs the chart's Deployment container (its command,
  args and env, rendered by the real ``helm``) against the tests' Kubernetes
  emulator: kopf's liveness endpoint answers and a PresenceCluster applied
  there gets its StatefulSet.

No skip: a machine without podman, runc and mmdebstrap fails here with the
reason (``scripts/setup.sh --containers``, which ``scripts/test.sh`` runs,
installs them)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from k8stools import k8s_tools  # noqa: F401 - the session fixture
from kube import eventually, free_port
from procs import wait_ready
from sipclient import SipClient
from test_local_mode import Upped, cli, wait_for

from presence_operator.local import podman

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = Path(sys.executable).parent / "presence-cluster"
NS = "presence-system"

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def images() -> podman.Podman:
    missing = podman.missing_tools()
    if missing:
        pytest.fail(f"containers need {', '.join(missing)}: run scripts/setup.sh --containers")
    res = subprocess.run([str(CLUSTER), "images", "--context", str(ROOT)], capture_output=True, text=True,
                         timeout=880)
    assert res.returncode == 0, f"building the images failed:\n{res.stdout}\n{res.stderr}"
    print(res.stdout)  # build times and sizes, for the record (pytest -s)
    return podman.Podman(log=lambda _: None)


async def podman_async(pm: podman.Podman, *args: str, timeout: float = 60) -> tuple[int, str]:
    """podman from a coroutine (the emulator serves from this event loop)."""
    p = await asyncio.create_subprocess_exec(*pm.argv, *args, env=pm.env, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(p.communicate(), timeout)
    return p.returncode or 0, out.decode()


async def test_node_image_serves_sip_as_non_root_and_drains_on_sigterm(images, tmp_path):
    sip_port = free_port(["127.0.0.1"])
    admin_port = free_port(["127.0.0.1"])
    name = f"node-{uuid.uuid4().hex[:8]}"
    code, out = await podman_async(images, "run", "-d", "--name", name, "--network", "host", podman.NODE_IMAGE,
                                   "--sip", f"127.0.0.1:{sip_port}", "--admin", f"127.0.0.1:{admin_port}",
                                   "--log-format", "json")
    assert code == 0, out
    try:
        await wait_ready(admin_port, timeout=30)
        for transport in ("udp", "tcp"):
            c = await SipClient(("127.0.0.1", sip_port), transport, "probe").open()
            try:
                assert (await c.request(c.build("OPTIONS", "sip:probe@example.com"))).code == 200, transport
            finally:
                c.close()
        code, uid = await podman_async(images, "exec", name, "id", "-u")
        assert (code, uid.strip()) == (0, "10001")
        # The HEALTHCHECK follows --admin (not the image's default 8081).
        code, out = await podman_async(images, "healthcheck", "run", name)
        assert code == 0, out
        code, out = await podman_async(images, "stop", "-t", "10", name)
        assert code == 0, out
        state = images.inspect(name)["State"]
        assert state["ExitCode"] == 0, state
        _, logs = await podman_async(images, "logs", name)
        lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
        assert any(entry["msg"] == "presence node node1 ready" for entry in lines), logs
        assert any(entry["msg"] == "node stopped" for entry in lines), logs
    finally:
        await podman_async(images, "rm", "-f", name)


def test_node_image_carries_only_the_nodes_dependencies(images):
    """#16: kopf and the Kubernetes client stay in the operator image."""
    probe = "import importlib.util as u; print([m for m in ('kopf', 'kubernetes', 'lxml', 'psycopg') if u.find_spec(m)])"
    node = images.run("run", "--rm", "--network", "host", "--entrypoint", "python", podman.NODE_IMAGE, "-c", probe)
    operator = images.run("run", "--rm", "--network", "host", "--entrypoint", "python", podman.OPERATOR_IMAGE,
                          "-c", probe)
    assert node.strip() == "['lxml', 'psycopg']"
    assert operator.strip() == "['kopf', 'kubernetes', 'lxml', 'psycopg']"


async def test_operator_image_runs_the_charts_operator_against_the_emulator(images, kmock, k8s_tools, tmp_path):
    kmock.prepare(NS)
    live_port = free_port(["127.0.0.1"])
    p = await asyncio.create_subprocess_exec(
        str(k8s_tools.helm), "template", "presence", str(ROOT / "charts" / "sip-presence-operator"), "--namespace",
        NS, "--skip-tests", "--set", f"operator.livenessPort={live_port}", stdout=asyncio.subprocess.PIPE)
    rendered, _ = await p.communicate()
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    kmock.register_crd(next(d for d in docs if d["kind"] == "CustomResourceDefinition"))
    c = dep["spec"]["template"]["spec"]["containers"][0]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "t", "user": {"token": "t"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t", "namespace": NS}}]}))
    kubeconfig.chmod(0o644)
    name = f"operator-{uuid.uuid4().hex[:8]}"
    env = [f"--env={v['name']}={v['value']}" for v in c.get("env", [])]
    code, out = await podman_async(
        images, "run", "-d", "--name", name, "--network", "host", *env, "--env=KUBECONFIG=/etc/kube/config",
        "-v", f"{kubeconfig}:/etc/kube/config:ro", "--entrypoint", c["command"][0], podman.OPERATOR_IMAGE,
        *c["args"])
    assert code == 0, out
    try:
        async def live() -> bool:
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", live_port), 1)
                w.write(b"GET /healthz HTTP/1.0\r\n\r\n")
                await w.drain()
                w.close()
                return True
            except (OSError, asyncio.TimeoutError):
                return False

        deadline = asyncio.get_running_loop().time() + 60
        while not await live():
            assert asyncio.get_running_loop().time() < deadline, (await podman_async(images, "logs", name))[1]
            await asyncio.sleep(0.2)
        manifest = yaml.safe_load((ROOT / "examples" / "03-federation" / "cluster.yaml").read_text())
        manifest["metadata"]["namespace"] = NS
        await kmock.post(f"/apis/presence.example.org/v1alpha1/namespaces/{NS}/presenceclusters", json=manifest)
        await eventually(lambda: kmock.live("apps/v1/statefulsets", NS, f"{manifest['metadata']['name']}-"
                                            f"{manifest['spec']['locations'][0]['name']}"), 30,
                         "the StatefulSet the operator in its container creates")
    finally:
        _, logs = await podman_async(images, "logs", name)
        await podman_async(images, "rm", "-f", "-t", "5", name)
        if os.environ.get("PRESENCE_TEST_VERBOSE"):
            print(logs)


def test_local_mode_runs_the_rendered_pods_in_containers_and_fails_over(images, tmp_path):
    """#16: ``presence-cluster up --runtime podman`` runs each pod of the
    StatefulSet the operator renders as a container of the built image (its
    command, mounts, security context, readiness probe); a killed container's
    tag moves, ``restart`` recreates it, a switchover brings the tag back, and
    ``down`` removes the containers."""
    c = Upped(tmp_path, "01-ha", 2, "--runtime", "podman")
    d, run = c.d, c.run
    try:
        assert {n["container"] for n in run["nodes"].values()} == {"demo-ha-l1-0", "demo-ha-l1-1"}
        assert run["nodes"]["l1-0"]["admin"] == "127.0.1.1:8081" and run["nodes"]["l1-1"]["sip"] == "127.0.1.2:5060"
        inspect = images.inspect("demo-ha-l1-0")
        assert inspect["HostConfig"]["ReadonlyRootfs"] and inspect["Config"]["User"] in ("", "10001", "10001:10001")
        assert images.run("exec", "demo-ha-l1-0", "id", "-u").strip() == "10001"
        assert c.tags("l1-0")["vip"]["state"] == "active"
        before = c.tags("l1-0")["vip"]["epoch"]
        os.kill(run["nodes"]["l1-0"]["pid"], signal.SIGKILL)
        wait_for(lambda: c.tags("l1-1")["vip"]["state"] == "active", 5, "vip active on l1-1")
        assert c.tags("l1-1")["vip"]["epoch"] > before
        res = cli(d, "restart", "l1-0")
        assert res.returncode == 0, res.stderr
        c.run = json.loads((d / "run.json").read_text())
        assert c.tags("l1-0")["vip"]["state"] == "backup"  # back as a backup: the tag moved at a higher epoch
        assert cli(d, "switchover", "vip", "l1-0").returncode == 0
        wait_for(lambda: c.tags("l1-0")["vip"]["state"] == "active", 5, "vip switched back to l1-0")
    finally:
        c.close()
    assert "demo-ha-l1" not in images.run("ps", "-a", "--format", "{{.Names}}")
