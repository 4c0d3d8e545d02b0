"""The ``presence-node`` command as a real process: configuration errors exit
2 naming the key, a started node answers SIP and admin and exits 0 soon after
SIGTERM, and without a given secret one is generated into ``state_dir``
with mode 0600 and logged by path, never by value."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from conftest import SECRET
from presence_node.cli import healthcheck_address, main
from procs import EXE, clean_env, spawn, wait_ready
from sipclient import SipClient

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


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_ready_line_follows_the_log_format(tmp_path, fmt):
    """#16: with ``--log-format json`` (the images' default) the ready line on
    stdout is a JSON object like every log line; with text, the plain line."""
    async with spawn(tmp_path, "--log-format", fmt, "--admin-secret-file", str(secret_file(tmp_path))) as node:
        line = node.stdout.decode()
        if fmt == "json":
            ready = json.loads(line)
            assert ready["msg"] == "presence node node1 ready" and ready["level"] == "info"
            assert ready["sip"] == f"127.0.0.1:{node.sip_port}" and ready["admin"] == f"127.0.0.1:{node.admin_port}"
        else:
            assert line.startswith("presence node node1 ready: SIP udp+tcp 127.0.0.1:") and "{" not in line


async def test_healthcheck_command_probes_healthz(tmp_path):
    """#16: ``presence-node healthcheck`` (the images' HEALTHCHECK) exits 0
    while the node's /healthz answers, 1 when nothing answers there."""
    async with spawn(tmp_path, "--admin-secret-file", str(secret_file(tmp_path))) as node:
        code, err = await run_cli("healthcheck", "--admin", f"0.0.0.0:{node.admin_port}")
        assert code == 0, err
        admin_port = node.admin_port
    code, err = await run_cli("healthcheck", "--admin", f"127.0.0.1:{admin_port}", "--timeout", "1")
    assert code == 1 and "healthz" in err


def test_healthcheck_finds_the_admin_address_of_the_node_it_checks(tmp_path):
    """Without ``--admin`` it reads the command line of the node (PID 1 in a
    container): its ``--admin`` flag, else its ``--config`` file's key."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text("admin: 127.0.0.1:9181\n")
    find = healthcheck_address
    assert find(["/opt/venv/bin/python", "/opt/venv/bin/presence-node", "--admin", "0.0.0.0:9090"]) \
        == ("127.0.0.1", 9090)
    assert find(["presence-node", "--config", str(cfg)]) == ("127.0.0.1", 9181)
    assert find(["presence-node", "--admin", "[::]:9090"]) == ("::1", 9090)
    assert find(["sh", "-c", "sleep 1"]) == ("127.0.0.1", 8081)  # not a node: the default
