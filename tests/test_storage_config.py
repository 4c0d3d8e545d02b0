"""Choosing the PostgreSQL backend: the DSN comes from a file or the
environment (never the configuration itself), a missing one is a clear
start-up error, an unreachable database stops the start, and a database
that goes away makes the node unready."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from presence_node.config import load
from presence_node.node import StorageConfigError, make_storage
from presence_node.storage.postgres import PostgresStorage
from procs import EXE, clean_env


def test_postgres_without_dsn_is_an_error_naming_both_sources(monkeypatch):
    monkeypatch.delenv("PRESENCE_DB_DSN", raising=False)
    with pytest.raises(StorageConfigError, match="dsn_file.*PRESENCE_DB_DSN"):
        make_storage(load(None, {"storage": {"backend": "postgres"}}))


def test_dsn_from_file_or_environment(tmp_path, monkeypatch):
    f = tmp_path / "dsn"
    f.write_text("host=127.0.0.1 dbname=x\n")
    s = make_storage(load(None, {"storage": {"backend": "postgres", "dsn_file": str(f)}}))
    assert isinstance(s, PostgresStorage) and s.dsn == "host=127.0.0.1 dbname=x"
    monkeypatch.setenv("PRESENCE_DB_DSN", "host=127.0.0.2")
    s = make_storage(load(None, {"storage": {"backend": "postgres"}}))
    assert isinstance(s, PostgresStorage) and s.dsn == "host=127.0.0.2"
    with pytest.raises(StorageConfigError, match="nope"):
        make_storage(load(None, {"storage": {"backend": "postgres", "dsn_file": str(tmp_path / "nope")}}))


async def run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        EXE, "--sip", "127.0.0.1:0", "--admin", "127.0.0.1:0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()  # type: ignore[return-value]


async def test_cli_exits_2_without_dsn_and_1_when_the_database_is_unreachable(tmp_path):
    cfg = tmp_path / "n.yaml"
    cfg.write_text("storage: {backend: postgres, pool_min: 1, connect_timeout: 2}\n")
    code, err = await run("--config", str(cfg), env=clean_env(PRESENCE_ADMIN_SECRET="s" * 20))
    assert code == 2 and "PRESENCE_DB_DSN" in err
    code, err = await run(
        "--config", str(cfg),
        env=clean_env(PRESENCE_ADMIN_SECRET="s" * 20, PRESENCE_DB_DSN="host=127.0.0.1 port=9 connect_timeout=1"),
    )
    assert code == 1 and "PostgreSQL unavailable" in err


async def test_readyz_follows_the_database(make_node, pg_server):
    dsn = pg_server.create_database()
    node = await make_node(storage_override=PostgresStorage(dsn, min_size=1, max_size=2))
    url = f"http://127.0.0.1:{node.admin_port}/readyz"
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200
        # Close the pool under the node: the database is gone for it.
        await node.storage.close()  # type: ignore[attr-defined]
        async with s.get(url) as r:
            body = await r.json()
            assert r.status == 503 and "storage unavailable" in body["error"]
