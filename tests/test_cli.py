"""The ``presence-node`` command as a real process: configuration errors exit
2 naming the key, a started node answers SIP and admin and exits 0 soon after
SIGTERM, and without a given secret one is generated into ``state_dir``
with mode 0600 and logged by path, never by value."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from conftest import SECRET
from presence_node.cli import main
from sipclient import SipClient

EXE = str(Path(sys.executable).parent / "presence-node")
READY = re.compile(rb"SIP udp\+tcp [0-9.]+:(\d+), admin http://[0-9.]+:(\d+)")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PRESENCE_ADMIN_SECRET"}
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


@asynccontextmanager
async def spawn(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    """Run ``presence-node --sip 127.0.0.1:0 --admin 127.0.0.1:0 ARGS`` and
    wait for its ready line; always reaped on exit."""
    err = tmp_path / "stderr.log"
    with err.open("wb") as err_f:
        proc = await asyncio.create_subprocess_exec(
            EXE, "--sip", "127.0.0.1:0", "--admin", "127.0.0.1:0", *args,
            stdout=asyncio.subprocess.PIPE, stderr=err_f, env=env if env is not None else clean_env(),
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        m = READY.search(line)
        assert m, (line, err.read_text())
        p = Proc(proc, err, int(m.group(1)), int(m.group(2)))
        p.stdout = line
        yield p
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


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


async def admin_status(port: int, secret: str, path: str = "/subscriptions") -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {secret}"}) as r:
            return r.status


def secret_file(tmp_path: Path) -> Path:
    f = tmp_path / "admin-secret"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        EXE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode, err.decode()  # type: ignore[return-value]


async def test_bad_config_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("subscription_expiry:\n  min: -5\n")
    code, err = await run_cli("--config", str(bad))
    assert code == 2
    assert "subscription_expiry.min" in err
    assert "bad.yaml" in err


def test_unknown_key_and_bad_flag_exit_2_naming_the_key(tmp_path, capsys):
    # In-process: main() returns before it touches logging or the event loop.
    bad = tmp_path / "bad.yaml"
    bad.write_text("notify:\n  min_intervall: 1\n")
    assert main(["--config", str(bad)]) == 2
    assert "notify.min_intervall" in capsys.readouterr().err
    assert main(["--sip", "nohost"]) == 2
    assert "sip:" in capsys.readouterr().err


async def test_unreadable_or_short_secret_exits_2(tmp_path):
    code, err = await run_cli("--sip", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                              "--admin-secret-file", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err
    short = tmp_path / "short"
    short.write_text("abc\n")
    code, err = await run_cli("--sip", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--admin-secret-file", str(short))
    assert code == 2 and "shorter" in err


async def test_node_process_serves_then_exits_0_on_sigterm(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\ndrain_timeout: 2\nsubscription_expiry: {{min: 1}}\n")
    async with spawn(tmp_path, "--config", str(cfg), "--admin-secret-file", str(secret_file(tmp_path))) as node:
        await wait_ready(node.admin_port)
        assert await admin_status(node.admin_port, SECRET) == 200
        assert await admin_status(node.admin_port, "wrong-secret-0123456789") == 401
        client = await SipClient(("127.0.0.1", node.sip_port), "udp", "alice").open()
        try:
            resp, d = await client.subscribe("sip:bob@example.com", expires=600)
            assert resp.code == 200
            [n] = await client.dialog_notifies(d, 1)
            assert b"<basic>closed</basic>" in n.body
            t0 = time.monotonic()
            assert await node.terminate(within=6) == 0
            assert time.monotonic() - t0 < 6
        finally:
            client.close()
        assert not (tmp_path / "state" / "admin-secret").exists(), "a given secret must not be replaced"


async def test_sigterm_drain_is_bounded_by_drain_timeout(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\ndrain_timeout: 1\n")
    async with spawn(tmp_path, "--config", str(cfg), "--admin-secret-file", str(secret_file(tmp_path))) as node:
        await wait_ready(node.admin_port)
        client = await SipClient(("127.0.0.1", node.sip_port), "udp", "alice").open()
        client.notify_answer = None  # leave the NOTIFY in flight
        try:
            resp, d = await client.subscribe("sip:bob@example.com", expires=600)
            assert resp.code == 200
            await client.dialog_notifies(d, 1)
            t0 = time.monotonic()
            assert await node.terminate(within=6) == 0
            elapsed = time.monotonic() - t0
        finally:
            client.close()
    # The drain waited for the unanswered NOTIFY, but no longer than allowed.
    assert 0.5 <= elapsed < 4, elapsed


@pytest.mark.parametrize(("log_format", "stale"), [("json", False), ("text", True)],
                         ids=["json-fresh", "text-stale-0644-file"])
async def test_generated_secret_is_written_0600_and_logged_by_path(tmp_path, log_format, stale):
    state = tmp_path / "state"
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    if stale:  # an empty (unusable) secret file left world-readable
        state.mkdir()
        (state / "admin-secret").write_text("")
        (state / "admin-secret").chmod(0o644)
    async with spawn(tmp_path, "--config", str(cfg), "--log-format", log_format) as node:
        await wait_ready(node.admin_port)
        target = state / "admin-secret"
        assert target.exists()
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        secret = target.read_text().strip()
        assert len(secret) >= 16
        assert await admin_status(node.admin_port, secret) == 200
        assert await admin_status(node.admin_port, SECRET) == 401
        assert await node.terminate(within=6) == 0
        logs = node.stderr + node.stdout.decode()
    assert str(target) in logs
    assert secret not in logs


async def test_generated_secret_is_reused_on_restart(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    secrets = []
    for _ in range(2):
        async with spawn(tmp_path, "--config", str(cfg)) as node:
            await wait_ready(node.admin_port)
            secrets.append((state / "admin-secret").read_text().strip())
            assert await admin_status(node.admin_port, secrets[-1]) == 200
            assert await node.terminate(within=6) == 0
    assert secrets[0] == secrets[1]


async def test_secret_from_environment_is_used_and_nothing_generated(tmp_path):
    state = tmp_path / "state"
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"state_dir: {state}\n")
    env = clean_env(PRESENCE_ADMIN_SECRET="env-secret-abcdefghijklmnop")
    async with spawn(tmp_path, "--config", str(cfg), env=env) as node:
        await wait_ready(node.admin_port)
        assert await admin_status(node.admin_port, "env-secret-abcdefghijklmnop") == 200
        assert await node.terminate(within=6) == 0
    assert not (state / "admin-secret").exists()
    assert "env-secret-abcdefghijklmnop" not in node.stderr
