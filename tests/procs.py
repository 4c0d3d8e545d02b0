"""Real ``presence-node`` processes for tests: spawned with a config, waited
for (their ready line), killed or terminated, always reaped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import yaml

EXE = str(Path(sys.executable).parent / "presence-node")
# The ready line: JSON (the default log format) or plain text.
READY = re.compile(rb'SIP udp\+tcp [0-9.]+:(\d+), admin http://[0-9.]+:(\d+)'
                   rb'|"sip": "[0-9.]+:(\d+)", "admin": "[0-9.]+:(\d+)"')


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PRESENCE_ADMIN_SECRET", "PRESENCE_DB_DSN")}
    env.update(extra)
    return env


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path, sip_port: int, admin_port: int) -> None:
        self.proc = proc
        self.stderr_path = stderr
        self.sip_port = sip_port
        self.admin_port = admin_port
        self.stdout = b""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def terminate(self, within: float) -> int:
        """SIGTERM; the exit status, which must come within ``within`` s."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(self.proc.communicate(), within)
        self.stdout += out
        return self.proc.returncode  # type: ignore[return-value]

    async def kill(self) -> None:
        """SIGKILL: the node dies without any clean-up."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.communicate()


@asynccontextmanager
async def spawn(
    workdir: Path, *args: str, env: dict[str, str] | None = None, sip: str = "127.0.0.1:0", admin: str = "127.0.0.1:0"
) -> AsyncIterator[Proc]:
    """Run ``presence-node --sip SIP --admin ADMIN ARGS`` and wait for its
    ready line; always reaped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    err = workdir / "stderr.log"
    with err.open("ab") as err_f:
        proc = await asyncio.create_subprocess_exec(
            EXE, "--sip", sip, "--admin", admin, *args,
            stdout=asyncio.subprocess.PIPE, stderr=err_f, env=env if env is not None else clean_env(), cwd=workdir,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        m = READY.search(line)
        assert m, (line, err.read_text())
        sip_port, admin_port = (int(g) for g in m.groups() if g is not None)
        p = Proc(proc, err, sip_port, admin_port)
        p.stdout = line
        yield p
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


def write_config(workdir: Path, **settings: Any) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "node.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


async def wait_ready(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "node never became ready"
            await asyncio.sleep(0.05)
