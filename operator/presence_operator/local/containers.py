"""Local mode's podman runtime: the nodes run as the containers of the pods
the operator renders (see :mod:`.pods`), from the images
``presence-cluster images`` builds.

The run record keeps what the process runtime keeps (each node's host pid,
addresses, location) plus the container's name and ``podman run``
arguments, so the supervisor, ``status``, a ``kill -9`` of the pid and the
failover benchmark work unchanged, and ``restart`` recreates the container
from the same arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .. import builders, spec as specs
from ..builders import meta
from . import podman, pods

#: Namespace of the pods' DNS names (``<pod>.<headless>.<namespace>.svc``).
NAMESPACE = "local"
#: Pod IPs: 127.0.1.1 for the cluster's first pod, then +1 in node order.
POD_NET = "127.0.1."


def pod_ips(owner: meta.Owner) -> dict[str, str]:
    return {meta.pod_name(owner, n): f"{POD_NET}{n.ordinal + 1}" for n in specs.nodes(owner.spec)}


def render(manifest: specs.Manifest, d: Path, admin_secret: str, cluster_secret: str | None,
           dsns: dict[str, str]) -> list[pods.Pod]:
    """The pods of ``manifest`` as the operator would create them, with the
    Secrets it and the user would have made (the DSN of each location's
    database, the generated admin and cluster secrets)."""
    owner = meta.Owner(manifest.name, NAMESPACE, "local", manifest.spec)
    secrets: dict[str, dict[str, bytes]] = {
        meta.secret_name(owner): {meta.ADMIN_SECRET_KEY: admin_secret.encode(),
                                  meta.CLUSTER_SECRET_KEY: (cluster_secret or "").encode()}}
    for loc in manifest.spec.locations:
        if loc.database is not None:
            ref = loc.database.secret_ref
            secrets.setdefault(ref.name, {})[ref.key] = dsns[loc.name].encode()
    return pods.pods(builders.render(owner), secrets, pod_ips(owner), NAMESPACE, d / "pods")


def _write(pod: pods.Pod) -> None:
    for path, mode in pod.dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    for path, (data, mode, gid) in pod.files.items():
        path.write_bytes(data)
        os.chown(path, 0, gid)
        path.chmod(mode)


def _run(pm: podman.Podman, name: str, argv: list[str]) -> int:
    """(Re)create and start a container; its host pid."""
    pm.run("rm", "-f", name, check=False)
    pm.run("run", *argv)
    return int(pm.run("inspect", "--format", "{{.State.Pid}}", name).strip())


def up(manifest: specs.Manifest, d: Path, admin_secret: str, cluster_secret: str | None, dsns: dict[str, str],
       log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Start every pod; the run record's ``nodes``."""
    pm = podman.Podman(log=log)
    nodes: dict[str, dict[str, Any]] = {}
    by_name = {n.name: n for n in specs.nodes(manifest.spec)}
    image = manifest.spec.image
    if not pm.exists(image):
        raise pods.PodError(f"image {image} not found: build it with 'presence-cluster images'")
    image_user = pm.run("image", "inspect", "--format", "{{.Config.User}}", image).strip()
    for pod in render(manifest, d, admin_secret, cluster_secret, dsns):
        if pod.image_user_must_be_non_root and not pods.runs_as_non_root(image_user):
            raise pods.PodError(f"{pod.name}: runAsNonRoot, but image {image} runs as {image_user or 'root'!r}")
        _write(pod)
        pid = _run(pm, pod.name, pod.argv)
        nodes[pod.node] = {"pid": pid, "location": by_name[pod.node].location, "sip": pod.sip, "admin": pod.admin,
                           "container": pod.name, "argv": pod.argv, "ready": pod.ready_url, "grace": pod.grace}
        log(f"pod {pod.name} started: container of {image}, pod IP {pod.ip}")
    return nodes


def restart(node: dict[str, Any]) -> int:
    """Recreate a node's container from its recorded arguments; its pid."""
    return _run(podman.Podman(log=lambda _: None), node["container"], node["argv"])


def stop(nodes: list[dict[str, Any]]) -> None:
    """Stop the containers as the kubelet does (SIGTERM, SIGKILL after the
    pod's grace period), in parallel, then remove them."""
    names = [n["container"] for n in nodes]
    if not names:
        return
    pm = podman.Podman(log=lambda _: None)
    grace = max(n.get("grace", 10) for n in nodes)
    pm.run("stop", "-t", str(grace), *names, check=False, timeout=grace + 30)
    pm.run("rm", "-f", *names, check=False)


def logs(name: str) -> str:
    return podman.Podman(log=lambda _: None).output("logs", name)[-2000:]
