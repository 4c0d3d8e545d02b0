"""The admin contract (presence_node.admin.contract, issue #14.5): one admin
port for the node and the operator, and the typed shape of a tag as GET /tags
lists it, which the server answers and the client (the operator's) reads."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from conftest import SECRET
from presence_node.admin import contract
from presence_node.admin.client import AdminClient
from presence_node.config import Config
from presence_operator.builders import meta

ROOT = Path(__file__).resolve().parent.parent


def test_one_admin_port_for_node_and_operator():
    assert Config().admin_address[1] == contract.ADMIN_PORT
    assert meta.ADMIN_PORT == contract.ADMIN_PORT


def test_the_node_image_keeps_the_contract_port():
    """The Dockerfile cannot import the constant: its literals must match it."""
    text = (ROOT / "docker" / "node.Dockerfile").read_text()
    assert re.search(rf"^EXPOSE .*\b{contract.ADMIN_PORT}/tcp", text, re.M)
    assert f'"--admin", "0.0.0.0:{contract.ADMIN_PORT}"' in text


async def test_a_listed_tag_has_the_contract_shape(make_node):
    node = await make_node(cluster_id="c1", sharing_tags={"vip": "active", "B": "backup"}, default_tag="vip")
    hints = typing.get_type_hints(contract.Tag)
    async with AdminClient(f"http://127.0.0.1:{node.admin_port}", SECRET) as client:
        items = await client.tags()
        moved = await client.activate("B")
    assert {t["tag"] for t in items} == {"vip", "B", f"~{node.config.node_id}"}
    for t in [*items, moved]:
        assert set(t) == set(hints)
        assert t["state"] in typing.get_args(hints["state"])
        assert isinstance(t["epoch"], int) and isinstance(t["private"], bool)
    assert moved["tag"] == "B" and moved["state"] == "active"
