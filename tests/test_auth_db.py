"""#15.1 with a shared database: the subscriber table (HA1 hashes only),
managed through the admin API and ``presence-node users``, read by every
node of the cluster; the nonce secret shared, so a nonce one node issued
authenticates on another.  Real PostgreSQL, real sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from wire import admin_url as url
from conftest import SECRET
from presence_node.sip import digest
from presence_node.storage.postgres import PostgresStorage
from procs import EXE, clean_env
from test_auth import answer, challenges, publish_with

AUTH = {"Authorization": f"Bearer {SECRET}"}
ALICE_HA1 = {
    "ha1_md5": digest.ha1("MD5", "alice", "example.com", "alice-pw"),
    "ha1_sha256": digest.ha1("SHA-256", "alice", "example.com", "alice-pw"),
}


@pytest.fixture
async def db_nodes(make_node, pg_dsn, tmp_path: Path):
    secret = tmp_path / "nonce-secret"
    secret.write_text("shared-nonce-secret-0123456789")
    nodes = []
    for i in range(2):
        nodes.append(await make_node(
            node_id=f"n{i + 1}", storage={"backend": "postgres"}, storage_override=PostgresStorage(pg_dsn),
            auth={"mode": "digest", "nonce_secret_file": str(secret)},
        ))
    return nodes


async def test_subscriber_added_on_one_node_authenticates_on_another(db_nodes, make_client, http):
    a, b = db_nodes
    async with http.put(url(a, "/subscribers/alice@example.com"), json=ALICE_HA1, headers=AUTH) as r:
        assert r.status == 201
        assert await r.json() == {"aor": "alice@example.com", "username": "alice", "realm": "example.com"}
    async with http.get(url(b, "/subscribers"), headers=AUTH) as r:
        body = await r.json()
        assert body["items"] == [{"aor": "alice@example.com", "username": "alice", "realm": "example.com"}]
    alice_a = await make_client("alice", target=a)
    alice_b = await make_client("alice", target=b)
    chal = challenges(await publish_with(alice_a, None))[0]  # a's nonce ...
    assert (await publish_with(alice_b, answer(chal, "alice", "alice-pw", "PUBLISH", alice_b.aor))).code == 200
    async with http.delete(url(a, "/subscribers/alice@example.com"), headers=AUTH) as r:
        assert r.status == 204
    resp = await publish_with(alice_b, answer(chal, "alice", "alice-pw", "PUBLISH", alice_b.aor, nc=2))
    assert resp.code == 401  # gone for every node


@pytest.mark.parametrize(
    "path, body, why",
    [
        ("/subscribers/alice@example.com", {"password": "x"}, "exactly"),
        ("/subscribers/alice@example.com", {"ha1_md5": "zz" * 16, "ha1_sha256": "0" * 64}, "hex"),
        ("/subscribers/alice", ALICE_HA1, "AOR"),
    ],
)
async def test_bad_subscriber_is_400_json_and_stores_nothing(db_nodes, http, path, body, why):
    a, _ = db_nodes
    async with http.put(url(a, path), json=body, headers=AUTH) as r:
        assert r.status == 400 and why in (await r.json())["error"]
    async with http.get(url(a, "/subscribers"), headers=AUTH) as r:
        assert (await r.json())["items"] == []


async def test_subscribers_need_the_admin_secret(db_nodes, http):
    a, _ = db_nodes
    async with http.put(url(a, "/subscribers/alice@example.com"), json=ALICE_HA1) as r:
        assert r.status == 401


async def test_without_database_the_users_file_rules(node, http):
    async with http.put(url(node, "/subscribers/alice@example.com"), json=ALICE_HA1, headers=AUTH) as r:
        assert r.status == 409 and "users_file" in (await r.json())["error"]


async def test_cli_adds_lists_and_deletes_with_hashes_only(db_nodes, make_client, http, tmp_path: Path, pg_dsn):
    a, _ = db_nodes
    pw = tmp_path / "pw"
    pw.write_text("alice-pw\n")
    sf = tmp_path / "admin-secret"
    sf.write_text(SECRET)

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            EXE, "users", *args, "--admin", f"127.0.0.1:{a.admin_port}", "--admin-secret-file", str(sf),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, (out + err).decode()

    code, out = await cli("add", "alice@example.com", "--password-file", str(pw))
    assert code == 0, out
    code, out = await cli("list")
    assert code == 0 and "alice@example.com" in out
    alice = await make_client("alice", target=a)
    chal = challenges(await publish_with(alice, None))[1]  # MD5
    assert (await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor))).code == 200
    # Only hashes at rest.
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        rows = await (await conn.execute("SELECT * FROM subscribers")).fetchall()
    assert len(rows) == 1 and not any("alice-pw" in str(v) for v in rows[0])
    code, out = await cli("delete", "alice@example.com")
    assert code == 0, out
    code, out = await cli("delete", "alice@example.com")
    assert code == 1 and "404" in out


async def test_watcher_rule_set_on_one_node_holds_on_another(db_nodes, make_client, http):
    """#15.3 with a shared database: the rule lives in the database."""
    from test_auth_watchers import subscribe_as

    a, b = db_nodes
    async with http.put(url(a, "/subscribers/alice@example.com"), json=ALICE_HA1, headers=AUTH) as r:
        assert r.status == 201
    async with http.put(url(a, "/presentities/bob@example.com/watchers/alice@example.com"), json={"allow": False},
                        headers=AUTH) as r:
        assert r.status == 200
    alice = await make_client("alice", target=b)
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw")).code == 403
    assert (await subscribe_as(alice, "sip:carol@example.com", "alice-pw")).code == 200
