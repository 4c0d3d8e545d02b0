"""Sharing tags through the admin API and the ``presence-node tags`` CLI:
listing, activation with epochs (409 for a stale one), 404 for an unknown
tag (never auto-created), 403 for a node's private tag, and the
configuration rules (tags need cluster_id)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from conftest import SECRET
from presence_node.config import ConfigError, load
from procs import EXE, clean_env

AUTH = {"Authorization": f"Bearer {SECRET}"}
CLUSTER = {"cluster_id": "c1", "sharing_tags": {"vip": "active", "B": "backup"}, "default_tag": "vip"}


async def call(node, method: str, path: str, **kw):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{node.admin_port}{path}", headers=AUTH, **kw) as r:
            return r.status, await r.json(content_type=None)


async def test_tags_listed_with_state_owner_and_epoch(make_node):
    node = await make_node(**CLUSTER)
    status, body = await call(node, "GET", "/tags")
    assert status == 200
    tags = {t["tag"]: t for t in body["items"]}
    assert tags["vip"]["state"] == "active" and tags["vip"]["owner"] == node.config.node_id and tags["vip"]["epoch"] == 1
    assert tags["B"]["state"] == "backup" and tags["B"]["owner"] is None
    assert tags[f"~{node.config.node_id}"]["private"] is True


async def test_activation_takes_next_epoch_and_stale_epoch_is_409(make_node):
    node = await make_node(**CLUSTER)
    status, t = await call(node, "POST", "/tags/B/activate")
    assert status == 200 and t["state"] == "active" and t["epoch"] == 1
    status, err = await call(node, "POST", "/tags/B/activate", json={"epoch": 1})
    assert status == 409 and err["current_epoch"] == 1
    status, t = await call(node, "POST", "/tags/B/activate", json={"epoch": 9})
    assert status == 200 and t["epoch"] == 9
    status, t = await call(node, "POST", "/tags/B/deactivate")
    assert status == 200 and t["state"] == "backup" and t["owner"] is None and t["epoch"] == 10


@pytest.mark.parametrize("body", ["nope", '{"epoch": "3"}', '{"epoch": 0}', '{"epoch": true}', '{"other": 1}', "[1]"])
async def test_bad_activation_body_is_400_and_changes_nothing(make_node, body):
    node = await make_node(**CLUSTER)
    before = (await call(node, "GET", "/tags"))[1]
    status, err = await call(node, "POST", "/tags/B/activate", data=body)
    assert status == 400 and "error" in err
    assert (await call(node, "GET", "/tags"))[1] == before


async def test_unknown_tag_is_404_and_not_created(make_node):
    node = await make_node(**CLUSTER)
    for action in ("activate", "deactivate"):
        status, err = await call(node, "POST", f"/tags/typo/{action}")
        assert status == 404 and "typo" in err["error"]
    names = [t["tag"] for t in (await call(node, "GET", "/tags"))[1]["items"]]
    assert "typo" not in names


async def test_private_tag_cannot_be_moved(make_node):
    node = await make_node(**CLUSTER)
    status, _ = await call(node, "POST", f"/tags/~{node.config.node_id}/deactivate")
    assert status == 403


async def test_tags_need_the_secret(make_node):
    node = await make_node(**CLUSTER)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{node.admin_port}/tags/B/activate") as r:
            assert r.status == 401
    assert (await call(node, "GET", "/tags"))[1]["items"][0]["owner"] is None  # B untouched


def test_tags_without_cluster_id_are_a_configuration_error():
    with pytest.raises(ConfigError, match="cluster_id"):
        load(None, {"sharing_tags": {"vip": "active"}})
    with pytest.raises(ConfigError, match="default_tag"):
        load(None, {"cluster_id": "c", "sharing_tags": {"a": "active", "b": "backup"}})
    with pytest.raises(ConfigError, match="default_tag"):
        load(None, {"cluster_id": "c", "sharing_tags": {"a": "active"}, "default_tag": "zz"})


async def test_records_are_stamped_with_their_tag(make_node, make_client):
    node = await make_node(**CLUSTER, cluster_pres_events=["presence"])
    c = await make_client("bob", target=node)
    await c.publish(b'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:bob@example.com">'
                    b'<tuple id="t"><status><basic>open</basic></status></tuple></presence>')
    resp, _ = await c.subscribe("sip:bob@example.com", event="dialog")
    assert resp.code == 200
    pubs = await node.storage.list_presentities(0, event=None, offset=0, limit=10)
    subs = await node.storage.list_subscriptions(0, presentity=None, watcher=None, event=None, offset=0, limit=10)
    assert [p.tag for p in pubs] == ["vip"]  # clustered package: the default tag
    assert [s.tag for s in subs] == [f"~{node.config.node_id}"]  # not clustered: this node's own


async def test_cli_lists_and_moves_tags(make_node, tmp_path):
    node = await make_node(**CLUSTER)
    secret = tmp_path / "secret"
    secret.write_text(SECRET)

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            EXE, "tags", *args, "--admin", f"127.0.0.1:{node.admin_port}", "--admin-secret-file", str(secret),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        return proc.returncode, out.decode(), err.decode()  # type: ignore[return-value]

    code, out, _ = await cli("list")
    assert code == 0 and "vip" in out and "active" in out
    code, out, _ = await cli("activate", "B", "--epoch", "5")
    assert code == 0 and "epoch 5" in out
    code, _, err = await cli("activate", "B", "--epoch", "2")
    assert code == 1 and "409" in err
    code, _, err = await cli("deactivate", "nope")
    assert code == 1 and "404" in err
