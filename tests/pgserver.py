"""A private, throw-away PostgreSQL server for the tests (a real server,
Debian's binaries, in a temporary directory; no mocks).

initdb refuses to run as root, so as root the server runs as the
``postgres`` system user that Debian's package creates.  Durability is
switched off (fsync, synchronous_commit): the data dies with the test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

from presence_operator.local.pg import bindir, free_port, run_as_postgres


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sock"
        self.port = free_port()
        self.bindir = bindir()

    def _run(self, *args: str) -> None:
        run_as_postgres(str(self.bindir / args[0]), *args[1:])

    def start(self) -> "PostgresServer":
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        return self.resume()

    def resume(self) -> "PostgresServer":
        """Start the server on its existing data directory (after ``halt``)."""
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def halt(self) -> None:
        """Stop the server as an administrator would (fast shutdown: open
        connections are terminated); ``resume`` starts it again."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except subprocess.CalledProcessError:
                pass

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)
