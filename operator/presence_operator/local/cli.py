"""``presence-cluster``: up, status, supervise, switchover, fence, restart, down.

    presence-cluster up examples/01-ha/cluster.yaml     # start, then supervise (Ctrl-C: nodes keep running)
    presence-cluster status                              # the kubectl get -o wide table
    presence-cluster supervise                           # supervise again after Ctrl-C
    presence-cluster switchover vip l1-1                 # move vip to l1-1 and pin it there
    presence-cluster switchover vip --clear              # unpin (failback policy applies again)
    presence-cluster fence l1-0                          # l1-0 owns nothing until 'fence --clear'
    presence-cluster fence --clear [l1-0]                # lift one fence, or all
    presence-cluster restart l1-0                        # restart one node with its configuration
    presence-cluster down                                # stop everything up started
    presence-cluster images                              # build the node and operator images with podman

``switchover`` and ``fence`` write ``operations.json`` in the state
directory (the local form of the CR's annotations); the supervisor carries
them out at its next probe, and ``status`` lists them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import yaml
from presence_node.admin.contract import ADMIN_PORT

from .. import nodecheck, spec as specs
from . import launch, podman
from .state import DEFAULT_DIR, ops_file, read_json, run_file, status_file, table, write_json
from .supervisor import Supervisor


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {msg}", flush=True)


def _load(path: Path) -> specs.Manifest:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise launch.LocalError(f"cannot read {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise launch.LocalError(f"{path} is not valid YAML: {e}") from e
    manifest = specs.load_manifest(doc)
    nodecheck.check(manifest.spec)
    return manifest


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _supervise(d: Path, interval: float) -> int:
    run = read_json(run_file(d))
    if run is None:
        raise launch.LocalError(f"no cluster in {d}: run 'presence-cluster up FILE' first")
    manifest = _load(Path(run["manifest"]))
    run["supervisor"] = os.getpid()
    write_json(run_file(d), run)
    sup = Supervisor(manifest.spec, run, d, interval=interval, log=_log)
    _log(f"supervising {run['name']} ({run['mode']}, {len(run['nodes'])} nodes, detection "
         f"{manifest.spec.failover.detection_seconds} s, probes every {interval} s); Ctrl-C stops supervising only")
    signal.signal(signal.SIGTERM, _interrupt)  # 'down' stops a background supervisor like Ctrl-C
    try:
        asyncio.run(sup.run_forever())
    except KeyboardInterrupt:
        _log("supervisor stopped; the nodes keep running ('presence-cluster down' stops them)")
    return 0


def _operations(d: Path) -> tuple[dict, specs.Manifest]:
    run = read_json(run_file(d))
    if run is None:
        raise launch.LocalError(f"no cluster in {d}: run 'presence-cluster up FILE' first")
    ops = read_json(ops_file(d)) or {}
    return {"fenced": list(ops.get("fenced") or []), "switchovers": dict(ops.get("switchovers") or {}),
            "nodes": list(run["nodes"])}, _load(Path(run["manifest"]))


def _switchover(d: Path, tag: str, node: str | None, clear: bool) -> None:
    ops, manifest = _operations(d)
    tags = {t.name: t for t in specs.tags(manifest.spec)}
    if tag not in tags:
        raise launch.LocalError(f"no tag {tag!r}; tags: {', '.join(tags)}")
    if clear:
        ops["switchovers"].pop(tag, None)
        _log(f"switchover request for {tag} cleared")
    else:
        if node is None:
            raise launch.LocalError("switchover TAG NODE (or TAG --clear)")
        if node not in ops["nodes"]:
            raise launch.LocalError(f"no node {node!r}; nodes: {', '.join(ops['nodes'])}")
        if not tags[tag].movable:
            raise launch.LocalError(f"tag {tag} cannot move in mode {manifest.spec.mode}")
        ops["switchovers"][tag] = node
        _log(f"switchover requested: {tag} -> {node} (pinned there until 'switchover {tag} --clear')")
    write_json(ops_file(d), {"fenced": ops["fenced"], "switchovers": ops["switchovers"]})


def _fence(d: Path, node: str | None, clear: bool) -> None:
    ops, _ = _operations(d)
    if node is not None and node not in ops["nodes"]:
        raise launch.LocalError(f"no node {node!r}; nodes: {', '.join(ops['nodes'])}")
    if clear:
        ops["fenced"] = [n for n in ops["fenced"] if node is not None and n != node]
        _log(f"fence lifted from {node or 'every node'}")
    elif node is None:
        raise launch.LocalError("fence NODE (or --clear [NODE])")
    else:
        ops["fenced"] = sorted({*ops["fenced"], node})
        _log(f"{node} fenced: its tags move to other nodes and it gets none ('fence --clear {node}' lifts it)")
    write_json(ops_file(d), {"fenced": ops["fenced"], "switchovers": ops["switchovers"]})


def _images(context: Path, home: Path) -> None:
    """Build the base, node and operator images; report times and sizes."""
    if not (context / "docker" / "node.Dockerfile").is_file():
        raise launch.LocalError(f"{context} is not the project's checkout (no docker/node.Dockerfile): give --context")
    pm = podman.Podman(home, log=_log)
    pm.build_all(context)
    for image in (podman.NODE_IMAGE, podman.OPERATOR_IMAGE):
        _log(f"{image}: {pm.size(image) / 1e6:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="presence-cluster", description="Run a PresenceCluster manifest locally.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    im = sub.add_parser("images", help="build the node and operator images with a private podman")
    im.add_argument("--context", type=Path, default=Path.cwd(), help="the project's checkout (default: .)")
    im.add_argument("--images-dir", type=Path, default=podman.DEFAULT_DIR,
                    help=f"podman's private storage and settings (default {podman.DEFAULT_DIR})")
    for name in ("up", "status", "supervise", "switchover", "fence", "restart", "down"):
        sp = sub.add_parser(name)
        sp.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .presence-cluster)")
        if name == "up":
            sp.add_argument("file", type=Path, help="a PresenceCluster manifest (YAML)")
            sp.add_argument("--host", default="127.0.0.1")
            sp.add_argument("--sip-base", type=int, default=5060, help="SIP port of the first node (then +1 each)")
            sp.add_argument("--admin-base", type=int, default=ADMIN_PORT, help="admin port of the first node (then +1)")
            sp.add_argument("--cluster-base", type=int, default=7060,
                            help="cluster channel port of the first node, federation modes (then +1)")
            sp.add_argument("--no-supervise", action="store_true", help="start and return")
            sp.add_argument("--runtime", choices=["process", "podman"], default="process",
                            help="node processes (default), or the containers of the pods the operator renders "
                                 "(images from 'presence-cluster images'; pod IPs 127.0.1.N)")
        if name == "switchover":
            sp.add_argument("tag")
            sp.add_argument("node", nargs="?")
            sp.add_argument("--clear", action="store_true", help="drop the request for TAG")
        if name == "fence":
            sp.add_argument("node", nargs="?")
            sp.add_argument("--clear", action="store_true", help="lift the fence of NODE, or of every node")
        if name == "restart":
            sp.add_argument("node")
        if name in ("up", "supervise"):
            sp.add_argument("--interval", type=float, default=0.2, help="probe period in seconds")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "images":
            _images(args.context.resolve(), args.images_dir)
            return 0
        args.dir = args.dir.resolve()
        if args.cmd == "up":
            manifest = _load(args.file)
            launch.up(manifest, args.file, args.dir, host=args.host, sip_base=args.sip_base,
                      admin_base=args.admin_base, cluster_base=args.cluster_base, runtime=args.runtime, log=_log)
            _log(f"cluster {manifest.name} up; state in {args.dir}")
            return 0 if args.no_supervise else _supervise(args.dir, args.interval)
        if args.cmd == "supervise":
            return _supervise(args.dir, args.interval)
        if args.cmd == "switchover":
            _switchover(args.dir, args.tag, args.node, args.clear)
            return 0
        if args.cmd == "fence":
            _fence(args.dir, args.node, args.clear)
            return 0
        if args.cmd == "restart":
            launch.restart(args.dir, args.node, log=_log)
            return 0
        if args.cmd == "status":
            run = read_json(run_file(args.dir))
            if run is None:
                print(f"no cluster in {args.dir}", file=sys.stderr)
                return 1
            print(table(run, read_json(status_file(args.dir))))
            return 0
        launch.down(args.dir, log=_log)
        return 0
    except (launch.LocalError, specs.SpecError, podman.PodmanError) as e:
        print(f"presence-cluster: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
