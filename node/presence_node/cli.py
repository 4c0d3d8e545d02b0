"""``presence-node``: run one node.

    presence-node --sip HOST:PORT --admin HOST:PORT [--config FILE]
                  [--admin-secret-file FILE] [--node-id ID] [--log-level L]

Flags override the file; every setting is validated by :mod:`.config`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import logs
from .admin.secret import SecretError
from .config import Config, ConfigError, load
from .node import Node

log = logging.getLogger("presence_node")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="presence-node", description="Run a SIP presence node.")
    p.add_argument("--sip", metavar="HOST:PORT", help="SIP listen address, UDP and TCP (default 127.0.0.1:5060)")
    p.add_argument("--admin", metavar="HOST:PORT", help="admin API listen address (default 127.0.0.1:8081)")
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, _ = config.sip_address
    ahost, _ = config.admin_address
    print(
        f"presence node {config.node_id} ready: SIP udp+tcp {host}:{node.sip_port}, "
        f"admin http://{ahost}:{node.admin_port} (GET /healthz; others need the bearer secret)",
        flush=True,
    )
    await stop.wait()
    await node.stop()


def main(argv: list[str] | None = None) -> int:
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
    except SecretError as e:
        print(f"presence-node: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"presence-node: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
