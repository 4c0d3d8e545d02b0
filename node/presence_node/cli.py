"""``presence-node``: run one node, or talk to a running one.

    presence-node --sip HOST:PORT --admin HOST:PORT [--config FILE]
                  [--admin-secret-file FILE] [--node-id ID] [--log-level L]
    presence-node tags list|activate TAG [--epoch N]|deactivate TAG
                  --admin HOST:PORT [--admin-secret-file FILE]
    presence-node healthcheck [--admin HOST:PORT] [--timeout S]
    presence-node users hash|add|delete|list [AOR] [--realm REALM] [--password-file FILE]
                  [--admin HOST:PORT --admin-secret-file FILE]

Flags override the file; every setting is validated by :mod:`.config`.  The
``tags`` commands wrap the admin API (the seed's MI commands
``pres_list_sharing_tags`` and ``pres_set_sharing_tag_active``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
import logging
import os
import signal
import sys
import urllib.request
from pathlib import Path

from . import logs
import aiohttp

from .admin.client import AdminClient, AdminError
from .admin.contract import ADMIN_PORT, SECRET_ENV
from .admin.secret import SecretError
from .config import Config, ConfigError, load, split_hostport
from .node import Node, StorageConfigError, tune_gc
from .service.auth import AuthConfigError, user_line

log = logging.getLogger("presence_node")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="presence-node", description="Run a SIP presence node.")
    p.add_argument("--sip", metavar="HOST:PORT", help="SIP listen address, UDP and TCP (default 127.0.0.1:5060)")
    p.add_argument("--admin", metavar="HOST:PORT", help=f"admin API listen address (default 127.0.0.1:{ADMIN_PORT})")
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    p.add_argument("--admin-secret-file", type=Path, metavar="FILE", help="file holding the admin bearer secret")
    p.add_argument("--node-id", help="this node's id (etags and tags carry it)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "text"])
    return p


def make_config(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    return load(
        args.config,
        {
            "sip": args.sip,
            "admin": args.admin,
            "admin_secret_file": args.admin_secret_file,
            "node_id": args.node_id,
            "log_level": args.log_level,
            "log_format": args.log_format,
        },
    )


async def serve(config: Config) -> None:
    node = Node(config)
    await node.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, _ = config.sip_address
    ahost, _ = config.admin_address
    sip, admin = f"{host}:{node.sip_port}", f"{ahost}:{node.admin_port}"
    # The TLS, WS and WSS listeners, when configured (their bound ports).
    more = {
        kind: f"{split_hostport(getattr(config.transports, kind))[0]}:{port}"
        for kind, port in node.transports.ports.items() if kind not in ("udp", "tcp")
    }
    if config.log_format == "json":
        line = logs.json_line(f"presence node {config.node_id} ready", logger=log.name, node=config.node_id,
                              sip=sip, admin=admin, **more)
    else:
        line = (f"presence node {config.node_id} ready: SIP udp+tcp {sip}, "
                f"admin http://{admin} (GET /healthz; others need the bearer secret)"
                + "".join(f"; SIP {kind} {address}" for kind, address in more.items()))
    print(line, flush=True)
    await stop.wait()
    await node.stop()


def tags_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="presence-node tags", description="List or move sharing tags of a running node.")
    p.add_argument("action", choices=["list", "activate", "deactivate"])
    p.add_argument("tag", nargs="?")
    p.add_argument("--admin", required=True, metavar="HOST:PORT", help="the node's admin API")
    p.add_argument("--admin-secret-file", type=Path, metavar="FILE", help=f"default: ${SECRET_ENV}")
    p.add_argument("--epoch", type=int, help="activate at this epoch (must exceed the current one)")
    args = p.parse_args(argv)
    if args.action != "list" and not args.tag:
        p.error(f"{args.action} needs a TAG")
    if args.admin_secret_file is not None:
        secret = args.admin_secret_file.read_text().strip()
    else:
        secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        p.error(f"give --admin-secret-file or set {SECRET_ENV}")

    async def run() -> int:
        async with AdminClient(f"http://{args.admin}", secret) as client:
            if args.action == "list":
                rows = await client.tags()
                print(f"{'TAG':<16} {'STATE':<7} {'OWNER':<16} {'EPOCH':>6}")
                for t in rows:
                    print(f"{t['tag']:<16} {t['state']:<7} {t['owner'] or '-':<16} {t['epoch']:>6}")
                return 0
            if args.action == "activate":
                t = await client.activate(args.tag, args.epoch)
            else:
                t = await client.deactivate(args.tag)
            print(f"{t['tag']}: {t['state']} here, owner {t['owner'] or '-'}, epoch {t['epoch']}")
            return 0

    return _admin_call("tags", args.admin, run)


def users_main(argv: list[str]) -> int:
    """Digest users (#15.1): ``hash`` prints an ``auth.users_file`` line;
    ``add``, ``delete`` and ``list`` manage the shared database's table
    through a node's admin API.  The password is read from a file or
    prompted for, and only its HA1 hashes (MD5 and SHA-256) leave this
    process."""
    p = argparse.ArgumentParser(prog="presence-node users", description="Manage the users digest authenticates.")
    p.add_argument("action", choices=["hash", "add", "delete", "list"])
    p.add_argument("aor", nargs="?", metavar="AOR", help="user@domain")
    p.add_argument("--realm", help="default: the AOR's domain (auth.realms may map it to another)")
    p.add_argument("--password-file", type=Path, metavar="FILE", help="default: prompt")
    p.add_argument("--admin", metavar="HOST:PORT", help="the node's admin API (add, delete, list)")
    p.add_argument("--admin-secret-file", type=Path, metavar="FILE", help=f"default: ${SECRET_ENV}")
    args = p.parse_args(argv)
    aor = (args.aor or "").removeprefix("sip:")
    user, at, domain = aor.partition("@")
    if args.action != "list" and (not (user and at and domain) or any(c.isspace() for c in aor)):
        p.error(f"{args.action} needs an AOR user@domain")
    realm = args.realm or domain.lower()
    password = ""
    if args.action in ("hash", "add"):
        if args.password_file is not None:
            password = args.password_file.read_text().rstrip("\r\n")
        else:
            import getpass

            password = getpass.getpass(f"password for {aor}: ")
        if not password:
            p.error("empty password")
    if args.action == "hash":
        print(user_line(aor, realm, password))
        return 0
    if not args.admin:
        p.error(f"{args.action} needs --admin HOST:PORT")
    secret = (args.admin_secret_file.read_text() if args.admin_secret_file else os.environ.get(SECRET_ENV, "")).strip()
    if not secret:
        p.error(f"give --admin-secret-file or set {SECRET_ENV}")

    async def run() -> int:
        async with AdminClient(f"http://{args.admin}", secret) as client:
            if args.action == "add":
                _, _, md5, sha256 = user_line(aor, realm, password).split()
                row = await client.put_subscriber(aor, md5, sha256, args.realm)
                print(f"{row['aor']}: realm {row['realm']}")
            elif args.action == "delete":
                await client.delete_subscriber(aor, args.realm)
                print(f"{aor}: deleted")
            else:
                for row in await client.subscribers():
                    print(f"{row['aor']:<40} {row['realm']}")
            return 0

    return _admin_call("users", args.admin, run)


def healthcheck_address(cmdline: list[str]) -> tuple[str, int]:
    """The admin address to probe for the node started with ``cmdline``
    (its flags and ``--config`` file, as it read them; a wildcard listen
    address is probed on loopback).  Not a node's command line: the default."""
    names = [Path(a).name for a in cmdline]
    args = cmdline[names.index("presence-node") + 1:] if "presence-node" in names else []
    try:
        host, port = make_config(args).admin_address
    except (ConfigError, SystemExit):
        host, port = make_config([]).admin_address
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host), port


def healthcheck_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="presence-node healthcheck",
        description="Exit 0 when the node's GET /healthz answers 200 (the container images' HEALTHCHECK).")
    p.add_argument("--admin", metavar="HOST:PORT",
                   help="default: the admin address of the node that is PID 1 (its flags or --config)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="S")
    args = p.parse_args(argv)
    if args.admin is not None:
        host, port = healthcheck_address(["presence-node", "--admin", args.admin])
    else:
        try:
            cmdline = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            cmdline = []
        host, port = healthcheck_address([a for a in cmdline if a])
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            if r.status == 200:
                return 0
            print(f"presence-node healthcheck: {url} answered {r.status}", file=sys.stderr)
    except OSError as e:
        print(f"presence-node healthcheck: {url}: {e}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tags"]:
        return tags_main(argv[1:])
    if argv[:1] == ["healthcheck"]:
        return healthcheck_main(argv[1:])
    if argv[:1] == ["users"]:
        return users_main(argv[1:])
    try:
        config = make_config(argv)
    except ConfigError as e:
        print(f"presence-node: {e}", file=sys.stderr)
        return 2
    logs.setup(config.log_level, config.log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        asyncio.run(serve(config))
    except (SecretError, StorageConfigError, AuthConfigError) as e:
        print(f"presence-node: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"presence-node: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _admin_call(command: str, admin: str, run: Callable[[], Awaitable[int]]) -> int:
    """Run an admin API command; its refusal or an unreachable node is exit 1 with the reason."""
    try:
        return asyncio.run(run())
    except AdminError as e:
        print(f"presence-node {command}: {e}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        print(f"presence-node {command}: cannot reach {admin}: {e}", file=sys.stderr)
        return 1
