"""The kubelet's part for local mode's podman runtime: the pods of the
StatefulSets the operator renders (``builders.render``, unchanged), as
``podman run`` command lines.

Each pod's container runs from exactly its spec: image, command, args, env,
volume mounts (ConfigMap and Secret volumes become files with the modes the
spec gives, owned as the kubelet would own them; emptyDir a 0777 directory),
security context (``readOnlyRootFilesystem`` -> ``--read-only``, dropped
capabilities, no privilege escalation, ``runAsNonRoot`` checked against the
image's user, ``runAsUser``/``runAsGroup``/``fsGroup``), its hostname (the
pod name, from which the node finds its configuration) and its readiness
probe (what the launcher waits for).  So a wrong mount path, a missing file
or a permission the pod's user lacks fails here as it would in a cluster.

What differs, because there is no pod network: every container shares the
host's network and gets its own loopback address as its pod IP; the pod
DNS names of its peers (``<pod>.<headless>.<namespace>.svc``) resolve to
theirs through ``--add-host``; and the listen addresses in the node
configuration (``0.0.0.0``, a pod's own IP in a cluster) are rewritten to
the pod IP in the ConfigMap data.  The ports the pod declares must be the
ones its configuration listens on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..builders import meta


class PodError(Exception):
    """A pod spec local mode cannot run faithfully; the message says why."""


@dataclass
class Pod:
    """One pod of a StatefulSet, ready to run."""

    name: str
    node: str  # the node id (its configuration's node_id)
    ip: str
    argv: list[str]  # podman run arguments after "run"
    files: dict[Path, tuple[bytes, int, int]] = field(default_factory=dict)  # path -> (data, mode, gid)
    dirs: dict[Path, int] = field(default_factory=dict)  # path -> mode
    ready_url: str = ""
    #: ``runAsNonRoot`` with no ``runAsUser``: the image's own user must not
    #: be root (the kubelet checks that at start).
    image_user_must_be_non_root: bool = False
    sip: str = ""
    admin: str = ""
    grace: int = 30


def _listen(cfg: dict[str, Any], key: str, ip: str) -> None:
    host, _, port = str(cfg[key]).rpartition(":")
    if host in ("0.0.0.0", "[::]", "::"):
        cfg[key] = f"{ip}:{port}"


def _port(container: dict[str, Any], name_or_number: Any) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    for p in container.get("ports", []):
        if p.get("name") == name_or_number:
            return int(p["containerPort"])
    raise PodError(f"container {container['name']} has no port named {name_or_number!r}")


def pods(objects: list[dict[str, Any]], secrets: dict[str, dict[str, bytes]], ips: dict[str, str],
         namespace: str, root: Path) -> list[Pod]:
    """Every pod of the StatefulSets in ``objects``.  ``secrets``: Secret
    name -> key -> value (what the API server would hold); ``ips``: pod
    name -> its loopback address; files go under ``root/<pod>/``."""
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    sets = [o for o in objects if o["kind"] == "StatefulSet"]
    hosts = [f"--add-host={name}.{s['spec']['serviceName']}.{namespace}.svc:{ips[name]}"
             for s in sets for name in _pod_names(s)]
    return [_pod(s, i, configmaps, secrets, ips, hosts, root) for s in sets for i in range(s["spec"]["replicas"])]


def _pod_names(sts: dict[str, Any]) -> list[str]:
    return [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]


def _pod(sts: dict[str, Any], ordinal: int, configmaps: dict[str, dict[str, Any]],
         secrets: dict[str, dict[str, bytes]], ips: dict[str, str], hosts: list[str], root: Path) -> Pod:
    name = f"{sts['metadata']['name']}-{ordinal}"
    ip = ips[name]
    spec = sts["spec"]["template"]["spec"]
    if len(spec["containers"]) != 1:
        raise PodError(f"{name}: one container per pod expected")
    c = spec["containers"][0]
    pod_sc = spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    fs_group = pod_sc.get("fsGroup")
    pod = Pod(name, "", ip, [], grace=int(spec.get("terminationGracePeriodSeconds", 30)))
    argv = ["-d", "--name", name, "--hostname", name, "--network", "host", *hosts]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    node_cfg: dict[str, Any] | None = None
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"])
        if v is None:
            raise PodError(f"{name}: volumeMount {m['name']!r} names no volume")
        host_dir = root / name / "volumes" / m["name"]
        pod.dirs[host_dir] = 0o755
        if "configMap" in v:
            cm = configmaps.get(v["configMap"]["name"])
            if cm is None:
                raise PodError(f"{name}: no ConfigMap {v['configMap']['name']!r}")
            for key, data in cm["data"].items():
                if key == f"node-{ordinal}.yaml":  # this pod's node configuration: listen on the pod IP
                    node_cfg = yaml.safe_load(data)
                    for k in ("sip", "admin"):
                        _listen(node_cfg, k, ip)
                    if "federation" in node_cfg:
                        _listen(node_cfg["federation"], "listen", ip)
                    data = yaml.safe_dump(node_cfg, sort_keys=True)
                pod.files[host_dir / key] = (data.encode(), *_owned(v["configMap"].get("defaultMode", 0o644),
                                                                   fs_group))
        elif "secret" in v:
            sv = v["secret"]
            values = secrets.get(sv["secretName"])
            if values is None:
                raise PodError(f"{name}: no Secret {sv['secretName']!r}")
            mode = sv.get("defaultMode", 0o644)
            for item in sv.get("items") or [{"key": k, "path": k} for k in values]:
                if item["key"] not in values:
                    raise PodError(f"{name}: Secret {sv['secretName']!r} has no key {item['key']!r}")
                pod.files[host_dir / item["path"]] = (values[item["key"]], *_owned(item.get("mode", mode), fs_group))
        elif "emptyDir" in v:
            pod.dirs[host_dir] = 0o777
        else:
            raise PodError(f"{name}: volume {m['name']!r} of a kind local mode does not run")
        ro = ":ro" if m.get("readOnly") else ""
        argv.append(f"--volume={host_dir}:{m['mountPath']}{ro}")
    if node_cfg is None:
        raise PodError(f"{name}: no node configuration node-{ordinal}.yaml is mounted")
    pod.node = node_cfg["node_id"]
    pod.sip, pod.admin = node_cfg["sip"], node_cfg["admin"]
    _check_ports(name, c, node_cfg)
    for e in c.get("env", []):
        argv.append(f"--env={e['name']}={e['value']}")
    if sc.get("readOnlyRootFilesystem"):
        argv.append("--read-only")
    for cap in (sc.get("capabilities") or {}).get("drop", []):
        argv.append(f"--cap-drop={cap}")
    if sc.get("allowPrivilegeEscalation") is False:
        argv.append("--security-opt=no-new-privileges")
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
        if uid is not None and int(uid) == 0:
            raise PodError(f"{name}: runAsNonRoot with runAsUser 0")
        pod.image_user_must_be_non_root = uid is None
    if uid is not None:
        argv.append(f"--user={uid}" + (f":{gid}" if gid is not None else ""))
    if fs_group is not None:
        argv.append(f"--group-add={fs_group}")
    probe = (c.get("readinessProbe") or {}).get("httpGet")
    if probe is None:
        raise PodError(f"{name}: no readinessProbe httpGet")
    pod.ready_url = f"http://{ip}:{_port(c, probe['port'])}{probe.get('path', '/')}"
    if c.get("command"):
        argv.append(f"--entrypoint={json.dumps(c['command'])}")
    argv.append(c["image"])
    argv += c.get("args", [])
    pod.argv = argv
    return pod


def _owned(mode: int, fs_group: int | None) -> tuple[int, int]:
    """(mode, gid) of a file of a ConfigMap or Secret volume as the kubelet
    leaves it: root's, with the given mode; with an ``fsGroup``, that
    group's, and readable by it whatever the mode (it adds 0440 to a
    read-only volume's files)."""
    if fs_group is None:
        return mode, 0
    return mode | 0o440, fs_group


def _check_ports(name: str, c: dict[str, Any], cfg: dict[str, Any]) -> None:
    """The ports the pod declares (Services and probes target them) are
    the ones the node listens on."""
    listens = {"sip-udp": cfg["sip"], "sip-tcp": cfg["sip"], "admin": cfg["admin"]}
    if "federation" in cfg:
        listens[meta.CLUSTER_PORT_NAME] = cfg["federation"]["listen"]
    for p in c.get("ports", []):
        listen = listens.get(p.get("name"))
        if listen is not None and int(str(listen).rpartition(":")[2]) != int(p["containerPort"]):
            raise PodError(f"{name}: port {p['name']} is {p['containerPort']} but the node listens on {listen}")


def runs_as_non_root(image_user: str) -> bool:
    """``runAsNonRoot``: the kubelet refuses an image whose user is root or
    not numeric (it cannot tell)."""
    uid = image_user.split(":", 1)[0]
    return uid.isdigit() and int(uid) != 0
