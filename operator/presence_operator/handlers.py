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
  (``/readyz`` and ``/tags``) in parallel, feeds the health detector
  (:func:`health.node_ok`: pod and node both well), calls
  :func:`planner.plan` and carries out its actions: intent patched into
  status *before* any order, activate/deactivate through the node's admin
  API, Kubernetes Events, the status, and in ``ha`` mode the pod label the
  SIP Service selects.
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
import datetime
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from presence_node.admin.client import AdminClient, AdminError, Probe

from . import builders, nodecheck
from . import planner as p
from . import spec as specs
from .builders import meta, secret as secret_builder
from .health import HealthDetector, PodView, node_ok, pod_view
from .kubeapi import Api, ApiError, load_config, path

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


# -- status <-> planner -------------------------------------------------------


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(s: str | None) -> float:
    if not s:
        return 0.0
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()




def record_to_json(r: p.FailoverRecord) -> dict[str, Any]:
    return {"from": r.source or "-", "to": r.target, "tags": list(r.tags), "reason": r.reason, "time": iso(r.time),
            "seconds": r.seconds,
            "summary": f"{','.join(r.tags)} {r.source or '-'}->{r.target} {r.seconds:.1f}s ({r.reason})"}


def record_from_json(d: dict[str, Any] | None) -> p.FailoverRecord | None:
    if not d:
        return None
    src = d.get("from")
    return p.FailoverRecord(None if src in (None, "-") else src, d["to"], tuple(d["tags"]), d["reason"],
                            from_iso(d.get("time")), float(d["seconds"]))


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


def observed_from_status(st: dict[str, Any], now: float, nodes: dict[str, p.NodeState], *,
                         fenced: frozenset[str] = frozenset(), switchovers: dict[str, str] | None = None) -> p.Observed:
    return p.Observed(
        now=now, nodes=nodes, fenced=fenced, switchovers=dict(switchovers or {}),
        tags={t: p.TagRecord(r.get("owner"), int(r.get("epoch", 0)), from_iso(r.get("since")))
              for t, r in (st.get("tags") or {}).items()},
        intent=p.intent_from_json(st.get("intent")),
        last_failover=record_from_json(st.get("lastFailover")),
        failover_count=int(st.get("failoverCount") or 0),
    )


# -- the per-cluster driver ------------------------------------------------------


class ClusterDriver:
    """Probe, judge, plan, act, record: the Kubernetes twin of the local
    supervisor (``local/supervisor.py``)."""

    def __init__(self, api: Api, owner: builders.Owner, body: kopf.Body, admin_secret: str,
                 logger: logging.Logger | Any, pods: Mapping[tuple[str, str], Iterable[PodView]]) -> None:
        self.api = api
        #: The pods index (kopf's, live): read at every tick, never a LIST.
        self.pods_index = pods
        self.owner = owner
        self.body = body
        self.secret = admin_secret
        self.log = logger
        self.admin_port = int(os.environ.get(ADMIN_PORT_ENV, meta.ADMIN_PORT))
        self.period = max(0.05, min(0.2, owner.spec.failover.detection_seconds / 5))
        self.detector = HealthDetector(owner.spec.failover.detection_seconds)
        self.status: dict[str, Any] = {}
        self.clients: dict[str, AdminClient] = {}
        self.pods: dict[str, PodView] = {}  # node -> its pod, when it has an IP and is not being deleted
        #: node -> its pod's labels as this tick knows them (the index's, updated by our own patches).
        self._labels: dict[str, dict[str, str]] = {}
        self._events: dict[str, float] = {}
        #: A completed or abandoned intent's clearing, held for the next status write of the tick.
        self._cleared: dict[str, Any] = {}
        self._cr_path = path(specs.KIND, owner.namespace, owner.name)

    async def load(self) -> None:
        """The status as stored: an intent left by a previous operator is rolled forward."""
        cr = await self.api.get(self._cr_path)
        self.status = dict((cr or {}).get("status") or {})

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
        spec, owner = self.owner.spec, self.owner
        self._cleared = {}  # one left by a failed tick: the intent is still in status and is judged again
        by_name = {v.name: v for v in self.pods_index.get((owner.namespace, owner.name), ())}
        all_nodes = specs.nodes(spec)
        probes, views = [], {}
        self.pods, self._labels = {}, {}
        for n in all_nodes:
            view = views[n.name] = by_name.get(meta.pod_name(owner, n))
            ip = view.probe_ip if view is not None else None
            if view is None or ip is None:
                probes.append(self._unreachable())
                continue
            self.pods[n.name] = view
            self._labels[n.name] = dict(view.labels)
            probes.append((await self._client(n.name, ip)).probe())
        results = await asyncio.gather(*probes)
        now = time.time()
        nodes: dict[str, p.NodeState] = {}
        for n, probe in zip(all_nodes, results):
            v = self.detector.observe(n.name, node_ok(views[n.name], probe.ready, probe.reachable), now,
                                      probe.storage_down)
            # Alive with its storage down (its own /readyz says so): the pod
            # is then not Ready either, yet the planner does not take it for
            # a node failure while its location's other nodes say the same.
            nodes[n.name] = p.NodeState(n.name, n.location, v.health, probe.reachable, v.since, v.failing_since,
                                        probe.active, v.storage_down)
        fenced, switchovers, problems = manual_operations((self.body.get("metadata") or {}).get("annotations"))
        unknown = sorted(fenced - {n.name for n in all_nodes})
        if unknown:
            problems.append(f"{FENCE_ANNOTATION}: no node named {', '.join(unknown)} in this cluster")
        for msg in problems:
            await self._do(p.Event("Warning", "BadAnnotation", msg))
        observed = observed_from_status(self.status, now, nodes, fenced=fenced, switchovers=switchovers)
        for action in p.plan(spec, observed):
            await self._do(action)
        if spec.mode == "ha":
            await self._label_owners()

    # -- actions --

    async def _patch_status(self, changes: dict[str, Any]) -> None:
        await self.api.patch(path(specs.KIND, self.owner.namespace, self.owner.name, "status"), {"status": changes})
        for k, v in changes.items():
            if v is None:
                self.status.pop(k, None)
            else:
                self.status[k] = v

    async def _do(self, a: p.Action) -> None:
        if isinstance(a, p.RecordIntent):
            cleared, self._cleared = self._cleared, {}
            await self._patch_status({**cleared, "intent": p.intent_to_json(a.intent)})  # before any order
        elif isinstance(a, p.ClearIntent):
            # Not written alone: the plan's SetStatus (or a new RecordIntent) that follows carries it,
            # so the status never shows the intent gone with the old owner and failover count; and a
            # driver stopped in between leaves the intent, which the next one finds done and clears
            # with the count.
            self._cleared = {"intent": None}
            if a.completed is not None:
                self._cleared["lastFailover"] = record_to_json(a.completed)
        elif isinstance(a, p.ActivateTag):
            await self._activate(a)
        elif isinstance(a, p.DeactivateTag):
            await self._deactivate(a)
        elif isinstance(a, p.Event):
            key = f"{a.reason}: {a.message}"
            if time.monotonic() - self._events.get(key, -1e9) > 30:
                self._events[key] = time.monotonic()
                kopf.event(self.body, type=a.type, reason=a.reason, message=a.message)
        elif isinstance(a, p.SetStatus):
            await self._set_status(a)

    async def _activate(self, a: p.ActivateTag) -> None:
        client = self.clients.get(a.node)
        if client is None:
            return
        if self.owner.spec.mode == "ha":  # no Service selects the old owner while the tag moves
            for node in self.pods:
                if node != a.node:
                    await self._label(node, a.tag, False)
        try:
            await client.activate(a.tag, a.epoch)
        except AdminError as e:
            body = e.body if isinstance(e.body, dict) else {}
            if not (e.status == 409 and body.get("owner") == a.node):  # 409 from itself: already landed
                self.log.warning("activate %s on %s at epoch %s failed: %s", a.tag, a.node, a.epoch, e)
                return
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            # Unreachable: the intent stays in status and the next tick re-sends the same order.
            self.log.warning("activate %s on %s: unreachable (%r); retried next tick", a.tag, a.node, e)
            return
        self.log.info("tag %s active on %s at epoch %s", a.tag, a.node, a.epoch)
        if self.owner.spec.mode == "ha":
            await self._label(a.node, a.tag, True)

    async def _deactivate(self, a: p.DeactivateTag) -> None:
        if self.owner.spec.mode == "ha":
            await self._label(a.node, a.tag, False)
        client = self.clients.get(a.node)
        if client is None:
            return
        try:
            await client.deactivate(a.tag)
        except (AdminError, aiohttp.ClientError, asyncio.TimeoutError) as e:
            # Best effort: the epoch of the following activation fences it.
            self.log.warning("deactivate %s on %s failed: %r", a.tag, a.node, e)

    async def _label(self, node: str, tag: str, on: bool) -> None:
        pod = self.pods.get(node)
        if pod is None:
            return
        key = meta.owner_label(tag)
        labels = self._labels[node]
        if (labels.get(key) == "true") == on:
            return
        await self.api.patch(path("Pod", self.owner.namespace, pod.name),
                             {"metadata": {"labels": {key: "true" if on else None}}})
        if on:
            labels[key] = "true"
        else:
            labels.pop(key, None)

    async def _label_owners(self) -> None:
        """The SIP Service follows the owner recorded in status (and nobody else)."""
        for tag, rec in (self.status.get("tags") or {}).items():
            for node in self.pods:
                await self._label(node, tag, node == rec.get("owner"))

    async def _set_status(self, a: p.SetStatus) -> None:
        st = self.status
        old_conds = {c["type"]: c for c in st.get("conditions") or []}
        conds = []
        for t, v in a.conditions.items():
            s = "True" if v else "False"
            prev = old_conds.get(t)
            since = prev["lastTransitionTime"] if prev and prev.get("status") == s else iso(time.time())
            conds.append({"type": t, "status": s, "reason": a.phase, "lastTransitionTime": since})
        old_tags = st.get("tags") or {}
        tags = {}
        for t, r in a.tags.items():
            prev = old_tags.get(t) or {}
            same = (prev.get("owner"), prev.get("epoch")) == (r.owner, r.epoch)
            tags[t] = {"owner": r.owner, "epoch": r.epoch,
                       "since": prev["since"] if same and prev.get("since") else iso(r.since or time.time())}
        new = {
            "observedGeneration": int(self.body.get("metadata", {}).get("generation") or 0),
            "phase": a.phase,
            "conditions": conds,
            "ready": f"{a.ready_nodes}/{a.total_nodes}",
            "readyNodes": a.ready_nodes,
            "totalNodes": a.total_nodes,
            "tagOwners": ", ".join(f"{t}={r.owner or '-'}" for t, r in a.tags.items()),
            "nodes": {n: {"pod": meta.pod_name(self.owner, _node_spec(self.owner.spec, n)), "ready": up,
                          "tags": list(tg)} for n, (up, tg) in a.nodes.items()},
            "tags": tags,
            "failoverCount": a.failover_count,
            "lastFailover": record_to_json(a.last_failover) if a.last_failover else None,
        }
        changes = {k: v for k, v in new.items() if st.get(k) != v}
        if "lastFailover" in changes and changes["lastFailover"] is None:
            del changes["lastFailover"]
        cleared, self._cleared = self._cleared, {}
        changes = {**cleared, **changes}
        if changes:
            await self._patch_status(changes)


def _node_spec(spec: specs.PresenceClusterSpec, name: str) -> specs.NodeSpec:
    return next(n for n in specs.nodes(spec) if n.name == name)


def main(argv: list[str] | None = None) -> None:
    """``presence-operator [kopf run options]``: this module's handlers, with a
    liveness endpoint on :8080/healthz unless ``--liveness`` is given."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--liveness") for a in args):
        args.append("--liveness=http://0.0.0.0:8080/healthz")
    import kopf.cli  # not imported by ``import kopf``: without it the console script fails

    kopf.cli.main(args=["run", "--module", __name__, *args], prog_name="presence-operator")
