"""Bring a local cluster up (databases, node configurations, detached node
processes) and down again, by the pids recorded in ``run.json``."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .. import spec as specs
from . import containers, pg, pods
from .state import cluster_secret_file, ops_file, read_json, run_file, secret_file, status_file, write_json


class LocalError(Exception):
    """A reason ``up`` or ``down`` cannot proceed; printed as is."""


def node_exe() -> str:
    exe = Path(sys.executable).parent / "presence-node"
    if exe.exists():
        return str(exe)
    found = shutil.which("presence-node")
    if found is None:
        raise LocalError("presence-node not found: install the project (scripts/setup.sh)")
    return found


def _owned_by(pid: int, needle: str) -> bool:
    """The pid is alive and still runs our program (pids get reused)."""
    try:
        return needle in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") and pg.alive(pid)
    except OSError:
        return False


def running(d: Path) -> dict[str, Any] | None:
    run = read_json(run_file(d))
    if run and any(_owned_by(n["pid"], "presence-node") for n in run["nodes"].values()):
        return run
    return None


def node_config(manifest: specs.Manifest, node: specs.NodeSpec, d: Path, sip: str, admin: str,
                dsn_file: Path | None, cluster: dict[str, str] | None = None) -> dict[str, Any]:
    """One node's configuration; ``cluster`` maps every node to its cluster
    channel address (federation modes)."""
    tags = specs.node_tags(manifest.spec, node)
    own = [t.name for t in tags if t.home == node.name]
    cfg = {
        "node_id": node.name,
        "sip": sip,
        "admin": admin,
        "cluster_id": manifest.name,
        "sharing_tags": {t.name: "active" if t.home == node.name else "backup" for t in tags},
        "default_tag": (own or [tags[0].name])[0],
        "cluster_pres_events": list(manifest.spec.events),
        "storage": {"backend": "postgres", "dsn_file": str(dsn_file)} if dsn_file else {"backend": "memory"},
        "admin_secret_file": str(secret_file(d).resolve()),
        "state_dir": str((d / "nodes" / node.name).resolve()),
        "drain_timeout": 1.0,
        "log_level": "info",
    }
    if cluster is not None:
        fed = specs.federation(manifest.spec, node, listen=cluster[node.name], address=lambda p: cluster[p.name],
                               secret_file=str(cluster_secret_file(d).resolve()))
        if fed is not None:
            cfg["federation"] = fed
    return specs.with_node_config(manifest.spec, cfg)


def _secret(path: Path) -> None:
    """A random secret in a new 0600 file; an existing one is kept."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))


def up(manifest: specs.Manifest, manifest_path: Path, d: Path, *, host: str, sip_base: int,
       admin_base: int, cluster_base: int = 7060, runtime: str = "process", log=print) -> dict[str, Any]:
    """Start everything; returns the run record (also written to run.json).
    In the federation modes every node also gets a cluster channel on
    ``cluster_base`` + its ordinal, every other node as a peer, and the
    cluster secret generated in the state directory.  ``runtime`` podman:
    the nodes are the containers of the pods the operator renders, on their
    own loopback addresses (:mod:`.containers`; the ``*_base`` ports and
    ``host`` then do not apply)."""
    spec = manifest.spec
    if running(d):
        raise LocalError(f"a cluster is already running from {d}: run 'presence-cluster down --dir {d}' first")
    d.mkdir(parents=True, exist_ok=True)
    status_file(d).unlink(missing_ok=True)
    ops_file(d).unlink(missing_ok=True)  # a new cluster inherits no fence nor switchover
    _secret(secret_file(d))
    cluster: dict[str, str] | None = None
    if spec.mode in specs.FEDERATION_MODES:
        _secret(cluster_secret_file(d))
        cluster = {n.name: f"{host}:{cluster_base + n.ordinal}" for n in specs.nodes(spec)}
    run: dict[str, Any] = {"name": manifest.name, "mode": spec.mode, "manifest": str(manifest_path.resolve()),
                           "created": time.time(), "postgres": {}, "nodes": {}, "supervisor": None}
    write_json(run_file(d), run)
    try:
        dsn_files: dict[str, Path] = {}
        if spec.mode in specs.SHARED_DB_MODES:
            for loc in spec.locations:
                log(f"starting PostgreSQL for location {loc.name} ...")
                info = pg.start(d, loc.name)
                run["postgres"][loc.name] = {k: v for k, v in info.items() if k != "dsn"}
                write_json(run_file(d), run)
                f = d / "db" / f"{loc.name}.dsn"
                f.parent.mkdir(exist_ok=True)
                fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(str(info["dsn"]))
                dsn_files[loc.name] = f.resolve()
        if runtime == "podman":
            dsns = {loc: Path(f).read_text() for loc, f in dsn_files.items()}
            cluster_secret = cluster_secret_file(d).read_text().strip() if cluster is not None else None
            run["runtime"] = "podman"
            run["nodes"] = containers.up(manifest, d, secret_file(d).read_text().strip(), cluster_secret, dsns,
                                         log)
            write_json(run_file(d), run)
        else:
            exe = node_exe()
            for n in specs.nodes(spec):
                sip, admin = f"{host}:{sip_base + n.ordinal}", f"{host}:{admin_base + n.ordinal}"
                work = d / "nodes" / n.name
                work.mkdir(parents=True, exist_ok=True)
                cfg = work / "node.yaml"
                cfg.write_text(yaml.safe_dump(node_config(manifest, n, d, sip, admin, dsn_files.get(n.location),
                                                          cluster)))
                pid = _spawn(exe, d, n.name)
                run["nodes"][n.name] = {"pid": pid, "location": n.location, "sip": sip, "admin": admin}
                if cluster is not None:
                    run["nodes"][n.name]["cluster"] = cluster[n.name]
                write_json(run_file(d), run)
        for name, n in run["nodes"].items():
            _wait_ready(name, n, d)
            channel = f", cluster channel {n['cluster']}" if "cluster" in n else ""
            log(f"node {name} ready: SIP udp+tcp {n['sip']}, admin http://{n['admin']}{channel} (pid {n['pid']})")
    except pods.PodError as e:
        down(d, log=lambda *_: None)
        raise LocalError(str(e)) from None
    except BaseException:
        down(d, log=lambda *_: None)
        raise
    return run


def _spawn(exe: str, d: Path, name: str) -> int:
    """Start one node, detached, from its configuration in the state dir."""
    work = d / "nodes" / name
    env = {k: v for k, v in os.environ.items()
           if k not in ("PRESENCE_ADMIN_SECRET", "PRESENCE_DB_DSN", "PRESENCE_CLUSTER_SECRET")}
    with (work / "stdout.log").open("ab") as out, (work / "stderr.log").open("ab") as err:
        proc = subprocess.Popen([exe, "--config", str(work / "node.yaml")], cwd=work, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return proc.pid


def restart(d: Path, name: str, log=print) -> int:
    """Stop one node if it still runs (SIGTERM, SIGKILL after 5 s), start it
    again with the same configuration and ports, wait until it is ready;
    returns the new pid (also written to run.json).  With a shared database
    the node comes back as a backup of the tags it owned (ownership is in
    the database); in ``federation`` (memory) it takes its own tag again."""
    run = read_json(run_file(d))
    if run is None:
        raise LocalError(f"no cluster in {d}: run 'presence-cluster up FILE' first")
    n = run["nodes"].get(name)
    if n is None:
        raise LocalError(f"no node {name!r}; nodes: {', '.join(run['nodes'])}")
    if _owned_by(n["pid"], "presence-node"):
        _signal(n["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while pg.alive(n["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pg.alive(n["pid"]):
            _signal(n["pid"], signal.SIGKILL)
        log(f"node {name} (pid {n['pid']}) stopped")
    n["pid"] = containers.restart(n) if "container" in n else _spawn(node_exe(), d, name)
    run = read_json(run_file(d)) or run  # re-read: keep what others wrote meanwhile (the supervisor pid)
    run["nodes"][name]["pid"] = n["pid"]
    write_json(run_file(d), run)
    _wait_ready(name, run["nodes"][name], d)
    log(f"node {name} ready again: SIP udp+tcp {n['sip']}, admin http://{n['admin']} (pid {n['pid']})")
    return n["pid"]


def _wait_ready(name: str, n: dict[str, Any], d: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pg.alive(n["pid"]):
            err = containers.logs(n["container"]) if "container" in n else \
                (d / "nodes" / name / "stderr.log").read_text()[-2000:]
            raise LocalError(f"node {name} exited during start-up:\n{err}")
        try:
            # A pod's readiness probe, else the admin API's /readyz.
            with urllib.request.urlopen(n.get("ready") or f"http://{n['admin']}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise LocalError(f"node {name} not ready after {timeout:.0f} s (see {d / 'nodes' / name / 'stderr.log'})")


def down(d: Path, log=print) -> None:
    """Stop the supervisor, the nodes (SIGTERM, then SIGKILL after a grace
    period), then the databases; only pids recorded in run.json, and only
    while they still run our programs; a database by its data directory
    (it may have been restarted since)."""
    run = read_json(run_file(d))
    if run is None:
        raise LocalError(f"nothing to stop: no {run_file(d)}")
    sup = run.get("supervisor")
    if sup and _owned_by(sup, "presence-cluster"):
        _signal(sup, signal.SIGTERM)
    nodes = [n["pid"] for n in run["nodes"].values() if _owned_by(n["pid"], "presence-node")]
    for pid in nodes:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    while any(pg.alive(p) for p in nodes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in nodes:
        if pg.alive(pid):
            _signal(pid, signal.SIGKILL)
    containers.stop([n for n in run["nodes"].values() if "container" in n])
    for name, p in run["nodes"].items():
        log(f"node {name} (pid {p['pid']}) stopped")
    for loc, info in run.get("postgres", {}).items():
        pid = pg.stop(info)
        data = Path(str(info["root"])) / "data"
        if pid is None:
            log(f"PostgreSQL of {loc} (data {data}) was not running; its directory removed")
        else:
            log(f"PostgreSQL of {loc} (pid {pid}, data {data}) stopped")
    run_file(d).unlink(missing_ok=True)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
