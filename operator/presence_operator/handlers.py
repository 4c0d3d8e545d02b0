"""The kopf driver of the planner: thin handlers, no decisions.

- ``create``/``resume``/``update`` of a PresenceCluster: validate the spec
  (an invalid one is a ``PermanentError``), make sure the cluster Secret
  exists (generated when absent), wait for the database Secrets
  (``TemporaryError``), and create or merge-patch every object the builders
  render.
- An index of the clusters' pods (:func:`cluster_pods`, fed by kopf's watch
  of the pods labelled with a cluster: IP, Ready condition, deletion,
  labels, as the kubelet reports them), so no tick asks the API server.
- One daemon per PresenceCluster (:class:`ClusterDriver`): every ``period``
  it reads its pods from that index, probes each node's admin API
  (``/readyz`` and ``/tags``) in parallel and hands the results
  (:func:`health.node_ok`: pod and node both well) to the executor
  (``executor.py``, shared with local mode), which judges, plans and acts
  through this module's ports: the status subresource (:class:`CrStatus`),
  Kubernetes Events (:class:`KopfEvents`), the nodes' admin APIs, and in
  ``ha`` mode the pod label the SIP Service selects (:class:`PodLabels`).
- Manual operations are annotations on the PresenceCluster, read at every
  tick and given to the planner as its ``fenced``/``switchovers`` inputs:
  ``presence.example.org/fence: "l1-0[,l1-1]"`` (those nodes own nothing:
  their tags move away, nothing is placed on them) and
  ``presence.example.org/switchover: "vip=l1-1[,tag=node]"`` (move the tag
  there and pin it there while the annotation stays).  Remove the annotation
  to lift it.  A malformed value is a ``BadAnnotation`` Warning Event and is
  ignored as a whole.
- ``presence-operator`` runs it with a liveness endpoint (``--liveness``).

Test override (documented): ``PRESENCE_OPERATOR_ADMIN_PORT`` sets the port
of the nodes' admin API on the pod IP (default 8081), so that node processes
on 127.0.0.x stand in for pods.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from presence_node.admin.client import AdminClient, Probe

from . import builders, nodecheck
from . import spec as specs
from .builders import meta, secret as secret_builder
from .executor import Executor, Observation
from .health import PodView, node_ok, pod_view
from .kubeapi import Api, ApiError, load_config, path
from .planner import EventReason, EventType

ADMIN_PORT_ENV = "PRESENCE_OPERATOR_ADMIN_PORT"
FENCE_ANNOTATION = f"{specs.GROUP}/fence"
SWITCHOVER_ANNOTATION = f"{specs.GROUP}/switchover"
PLURAL = "presenceclusters"
#: Drivers running in this operator (for the liveness probe).
DRIVERS: dict[tuple[str, str], "ClusterDriver"] = {}


def parse_spec(body: Any) -> specs.PresenceClusterSpec:
    try:
        spec = specs.load_manifest({"apiVersion": specs.API_VERSION, "kind": specs.KIND,
                                    "metadata": {"name": body["metadata"]["name"]},
                                    "spec": dict(body.get("spec") or {})}).spec
        nodecheck.check(spec)
        return spec
    except specs.SpecError as e:
        raise kopf.PermanentError(str(e)) from e


def owner_of(body: Any) -> builders.Owner:
    md = body["metadata"]
    return builders.Owner(md["name"], md["namespace"], md["uid"], parse_spec(body))


# -- kopf wiring ------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    load_config()


@kopf.on.probe(id="clusters")
def clusters_probe(**_: Any) -> int:
    return len(DRIVERS)


@kopf.on.resume(specs.GROUP, specs.VERSION, PLURAL)
@kopf.on.create(specs.GROUP, specs.VERSION, PLURAL)
@kopf.on.update(specs.GROUP, specs.VERSION, PLURAL, field="spec")
async def reconcile(body: kopf.Body, logger: kopf.Logger, **_: Any) -> dict[str, Any]:
    owner = owner_of(body)
    api = Api()
    await ensure_secret(api, owner)
    for loc in owner.spec.locations:
        if loc.database is not None:
            ref = loc.database.secret_ref
            sec = await api.get(path("Secret", owner.namespace, ref.name))
            if sec is None or ref.key not in (sec.get("data") or {}):
                raise kopf.TemporaryError(f"waiting for Secret {ref.name} (key {ref.key}): the DSN of "
                                          f"location {loc.name}", delay=5)
    done = [f"{o['kind']}/{o['metadata']['name']} {await api.apply(o)}" for o in builders.render(owner)]
    logger.info("applied: %s", ", ".join(done))
    return {"applied": len(done)}


@kopf.index("v1", "pods", labels={meta.CLUSTER_LABEL: kopf.PRESENT})
def cluster_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], PodView]:
    """(namespace, cluster) -> the views of its pods; kopf drops a pod from
    the index when it is deleted or loses the label."""
    md = body["metadata"]
    return {(md["namespace"], md["labels"][meta.CLUSTER_LABEL]): pod_view(body)}


@kopf.daemon(specs.GROUP, specs.VERSION, PLURAL, cancellation_timeout=1.0)
async def failover_daemon(body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger,
                          cluster_pods: kopf.Index[tuple[str, str], PodView], **_: Any) -> None:
    try:
        owner = owner_of(body)
    except kopf.PermanentError:
        return  # the create handler reports it
    api = Api()
    admin = await read_admin_secret(api, owner, stopped)
    if admin is None:
        return
    driver = ClusterDriver(api, owner, body, admin, logger, cluster_pods)
    DRIVERS[(owner.namespace, owner.name)] = driver
    try:
        await driver.load()
        while not stopped:
            started = time.monotonic()
            try:
                await driver.tick()
            except (ApiError, OSError) as e:  # the API server is the retry loop's business: next tick
                logger.warning("tick failed: %s", e)
            await asyncio.sleep(max(0.0, driver.period - (time.monotonic() - started)))
    finally:
        DRIVERS.pop((owner.namespace, owner.name), None)
        await driver.close()


# -- the Secret ---------------------------------------------------------------


async def ensure_secret(api: Api, owner: builders.Owner) -> None:
    """Create the cluster's Secret (admin and cluster secrets, generated)
    when absent.  An existing one (``spec.secretRef``) is never changed: in
    the federation modes, whose pods mount its cluster key, a Secret without
    that key is waited for (``TemporaryError``)."""
    name = meta.secret_name(owner)
    sec = await api.get(path("Secret", owner.namespace, name))
    if sec is None:
        obj = secret_builder.build(owner, secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        try:
            await api.create(path("Secret", owner.namespace), obj)
        except ApiError as e:
            if e.status != 409:
                raise
    elif owner.spec.mode in specs.FEDERATION_MODES and meta.CLUSTER_SECRET_KEY not in (sec.get("data") or {}):
        raise kopf.TemporaryError(f"waiting for key {meta.CLUSTER_SECRET_KEY!r} in Secret {name}: the cluster "
                                  f"secret of mode {owner.spec.mode} (the operator generates it only with the "
                                  f"Secret itself)", delay=5)


async def read_admin_secret(api: Api, owner: builders.Owner, stopped: kopf.DaemonStopped) -> str | None:
    while not stopped:
        sec = await api.get(path("Secret", owner.namespace, meta.secret_name(owner)))
        data = (sec or {}).get("data") or {}
        if meta.ADMIN_SECRET_KEY in data:
            return base64.b64decode(data[meta.ADMIN_SECRET_KEY]).decode().strip()
        await asyncio.sleep(0.2)
    return None


# -- manual operations ---------------------------------------------------------


def manual_operations(annotations: Any) -> tuple[frozenset[str], dict[str, str], list[str]]:
    """The fence and switchover annotations → (fenced nodes, tag -> node,
    problems).  A malformed annotation is ignored whole (a half-read
    operation is worse than none) and reported as a problem."""
    annotations = annotations or {}
    problems: list[str] = []
    fenced: frozenset[str] = frozenset()
    raw = annotations.get(FENCE_ANNOTATION)
    if raw is not None:
        names = [x.strip() for x in str(raw).split(",") if x.strip()]
        if all(n.replace("-", "").isalnum() for n in names):
            fenced = frozenset(names)
        else:
            problems.append(f"{FENCE_ANNOTATION}: {raw!r} is not a comma-separated list of node names; ignored")
    switchovers: dict[str, str] = {}
    raw = annotations.get(SWITCHOVER_ANNOTATION)
    if raw is not None:
        pairs = [x.strip() for x in str(raw).split(",") if x.strip()]
        parsed = [tuple(x.strip() for x in pair.split("=", 1)) for pair in pairs]
        tags = [t[0] for t in parsed]
        if all(len(t) == 2 and all(t) for t in parsed) and len(set(tags)) == len(tags):
            switchovers = dict(parsed)  # type: ignore[arg-type]
        else:
            problems.append(f"{SWITCHOVER_ANNOTATION}: {raw!r} is not TAG=NODE[,TAG=NODE] (each tag once); ignored")
    return fenced, switchovers, problems


# -- the executor's ports, in Kubernetes ------------------------------------------


class CrStatus:
    """The status store: the PresenceCluster's status subresource."""

    def __init__(self, api: Api, owner: builders.Owner) -> None:
        self.api = api
        self.namespace, self.name = owner.namespace, owner.name

    async def read(self) -> dict[str, Any]:
        cr = await self.api.get(path(specs.KIND, self.namespace, self.name))
        return dict((cr or {}).get("status") or {})

    async def write(self, status: Mapping[str, Any], patch: Mapping[str, Any]) -> None:
        await self.api.patch(path(specs.KIND, self.namespace, self.name, "status"), {"status": dict(patch)})


class KopfEvents:
    """Kubernetes Events on the PresenceCluster."""

    def __init__(self, body: kopf.Body) -> None:
        self.body = body

    def emit(self, type: EventType, reason: EventReason, message: str) -> None:
        kopf.event(self.body, type=str(type), reason=str(reason), message=message)


class PodLabels:
    """Routing in mode ha: the owner label the SIP Service selects, on the
    pods this tick knows (the index's labels, updated by our own patches)."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.pods: dict[str, PodView] = {}
        self._labels: dict[str, dict[str, str]] = {}

    def see(self, pods: Mapping[str, PodView]) -> None:
        """This tick's pods: node -> pod, those that have an IP and are not being deleted."""
        self.pods = dict(pods)
        self._labels = {n: dict(v.labels) for n, v in pods.items()}

    def nodes(self) -> list[str]:
        return list(self.pods)

    async def label(self, node: str, tag: str, on: bool) -> None:
        pod = self.pods.get(node)
        if pod is None:
            return
        key = meta.owner_label(tag)
        labels = self._labels[node]
        if (labels.get(key) == "true") == on:
            return
        await self.api.patch(path("Pod", self.namespace, pod.name),
                             {"metadata": {"labels": {key: "true" if on else None}}})
        if on:
            labels[key] = "true"
        else:
            labels.pop(key, None)


# -- the per-cluster driver ------------------------------------------------------


class ClusterDriver:
    """Probe each node's pod and admin API, hand them to the executor: the
    Kubernetes twin of the local supervisor (``local/supervisor.py``)."""

    def __init__(self, api: Api, owner: builders.Owner, body: kopf.Body, admin_secret: str,
                 logger: logging.Logger | Any, pods: Mapping[tuple[str, str], Iterable[PodView]]) -> None:
        #: The pods index (kopf's, live): read at every tick, never a LIST.
        self.pods_index = pods
        self.owner = owner
        self.body = body
        self.secret = admin_secret
        self.admin_port = int(os.environ.get(ADMIN_PORT_ENV, meta.ADMIN_PORT))
        self.period = max(0.05, min(0.2, owner.spec.failover.detection_seconds / 5))
        self.clients: dict[str, AdminClient] = {}
        self.routing = PodLabels(api, owner.namespace)
        self.executor = Executor(owner.spec, store=CrStatus(api, owner), events=KopfEvents(body),
                                 admins=self.clients, log=logger,
                                 routing=self.routing if owner.spec.mode == "ha" else None)

    async def load(self) -> None:
        await self.executor.load()

    async def close(self) -> None:
        for c in self.clients.values():
            await c.__aexit__(None, None, None)
        self.clients.clear()

    async def _client(self, node: str, ip: str) -> AdminClient:
        url = f"http://{ip}:{self.admin_port}"
        c = self.clients.get(node)
        if c is None or c.base != url:
            if c is not None:
                await c.__aexit__(None, None, None)
            timeout = max(0.1, min(0.5, self.period * 2))
            c = await AdminClient(url, self.secret, timeout=timeout).__aenter__()
            self.clients[node] = c
        return c

    async def _unreachable(self) -> Probe:
        return Probe(False, False, False, {})

    async def tick(self) -> None:
        owner = self.owner
        by_name = {v.name: v for v in self.pods_index.get((owner.namespace, owner.name), ())}
        all_nodes = specs.nodes(owner.spec)
        views = {n.name: by_name.get(meta.pod_name(owner, n)) for n in all_nodes}
        probes, pods = [], {}
        for n in all_nodes:
            view = views[n.name]
            ip = view.probe_ip if view is not None else None
            if view is None or ip is None:
                probes.append(self._unreachable())
                continue
            pods[n.name] = view
            probes.append((await self._client(n.name, ip)).probe())
        self.routing.see(pods)
        results = await asyncio.gather(*probes)
        seen = {n.name: Observation(n.location, node_ok(views[n.name], r.ready, r.reachable), r,
                                    pod=meta.pod_name(owner, n)) for n, r in zip(all_nodes, results)}
        fenced, switchovers, problems = manual_operations((self.body.get("metadata") or {}).get("annotations"))
        unknown = sorted(fenced - {n.name for n in all_nodes})
        if unknown:
            problems.append(f"{FENCE_ANNOTATION}: no node named {', '.join(unknown)} in this cluster")
        for msg in problems:
            self.executor.event(EventType.WARNING, EventReason.BAD_ANNOTATION, msg)
        await self.executor.tick(seen, fenced=fenced, switchovers=switchovers,
                                 generation=int((self.body.get("metadata") or {}).get("generation") or 0))


def main(argv: list[str] | None = None) -> None:
    """``presence-operator [kopf run options]``: this module's handlers, with a
    liveness endpoint on :8080/healthz unless ``--liveness`` is given."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--liveness") for a in args):
        args.append("--liveness=http://0.0.0.0:8080/healthz")
    import kopf.cli  # not imported by ``import kopf``: without it the console script fails

    kopf.cli.main(args=["run", "--module", __name__, *args], prog_name="presence-operator")
