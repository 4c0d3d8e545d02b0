"""A private PostgreSQL server per location, from Debian's binaries.

initdb refuses to run as root, so as root the server runs as the
``postgres`` system user (``runuser``), and its directory is created
under the system temporary directory: a state directory below a private
home (or pytest's 0700 tree) may not be traversable by that user.  The
server is started detached (``pg_ctl start``); ``stop`` stops whatever
server runs on the data directory created here (``pg_ctl stop -D``), so it
finds the server even after a restart, and touches no other.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence


def bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries not found: run scripts/setup.sh (Debian package postgresql)")
    return Path(initdb).parent


def free_port(hosts: Sequence[str] = ("127.0.0.1",)) -> int:
    """A TCP port free on every one of ``hosts`` (nodes standing in for
    pods listen on the same port at different loopback addresses)."""
    while True:
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for h in hosts[1:]:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue


def free_base(n: int) -> int:
    """A base port with n free consecutive UDP+TCP ports above it on
    127.0.0.1 (local mode numbers its nodes' ports from a base)."""
    for _ in range(200):
        base = 20000 + int.from_bytes(os.urandom(2), "big") % 30000
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def run_as_postgres(*cmd: str) -> None:
    """Run a server binary; as root, as the ``postgres`` user (initdb refuses root)."""
    argv = list(cmd)
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)


def start(state_dir: Path, location: str) -> dict[str, object]:
    """initdb + start; returns what ``stop`` needs (root, port, pid, dsn)."""
    if os.geteuid() == 0:
        root = Path(tempfile.mkdtemp(prefix=f"presence-cluster-pg-{location}-"))
        shutil.chown(root, "postgres")
    else:
        root = state_dir / "pg" / location
        root.mkdir(parents=True, exist_ok=True)
    data, sock = root / "data", root / "sock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(sock, "postgres")
    bins = bindir()
    port = free_port()
    run_as_postgres(str(bins / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=100"
    run_as_postgres(str(bins / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return {"root": str(root), "port": port, "pid": pid,
            "dsn": f"host=127.0.0.1 port={port} user=postgres dbname=postgres"}


def stop(info: dict[str, object], timeout: float = 15.0) -> int | None:
    """Stop the server running on the data directory we created, whatever
    its pid now (it may have been restarted since ``start``): ``pg_ctl stop
    -D`` (fast shutdown, immediate if that times out), then remove its
    directory.  Returns the pid stopped, None if none ran."""
    root = Path(str(info["root"]))
    data = root / "data"
    pid = postmaster_pid(data)
    if pid is not None and alive(pid):
        pg_ctl = str(bindir() / "pg_ctl")
        try:
            run_as_postgres(pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", str(max(1, round(timeout))), "stop")
        except subprocess.CalledProcessError:
            run_as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    else:
        pid = None
    shutil.rmtree(root, ignore_errors=True)
    return pid


def postmaster_pid(data: Path) -> int | None:
    """The pid the server running on ``data`` wrote (None: no pid file)."""
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
