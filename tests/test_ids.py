"""The identifiers the node mints (#12.11): etags, dialog tags and NOTIFY
branches are unguessable (each carries its own 96 random bits from
``secrets.token_urlsafe``) and never repeat across nodes or restarts (S36,
S78)."""

from __future__ import annotations

import re

import pytest

from presence_node.service import ids as ids_module
from presence_node.service.ids import Ids

TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")  # RFC 3261 token characters
KINDS = ("etag", "tag", "branch")


@pytest.mark.parametrize("kind", KINDS)
def test_each_id_carries_at_least_64_random_bits_of_its_own(monkeypatch, kind):
    """The documented source: one secrets.token_urlsafe call per id, of at
    least 8 bytes (RFC 3261 §19.3 asks 32 bits of a tag; a guessable etag let
    a third party remove another presentity's publication, a guessable
    branch lets an off-path party forge the 481 that ends a subscription)."""
    calls: list[int] = []

    def fake(nbytes: int) -> str:
        calls.append(nbytes)
        return f"RANDOM{len(calls)}"

    monkeypatch.setattr(ids_module, "token_urlsafe", fake)
    mint = getattr(Ids("n1"), kind)
    first, second = mint(), mint()
    assert calls and min(calls) * 8 >= 64 and len(calls) == 2
    assert first.endswith("RANDOM1") and second.endswith("RANDOM2")
    assert first.removesuffix("RANDOM1") == second.removesuffix("RANDOM2")  # nothing else varies


@pytest.mark.parametrize("kind", KINDS)
def test_ids_are_unique_across_nodes_and_restarts_and_are_tokens(kind):
    """S36, S78: never reused, cluster-wide; two nodes of one id (a restart)
    included."""
    minted = [getattr(ids, kind)() for ids in (Ids("n1"), Ids("n1"), Ids("n2")) for _ in range(20000)]
    assert len(set(minted)) == len(minted)
    assert all(TOKEN.match(i) for i in minted)
    if kind == "branch":
        assert all(i.startswith("z9hG4bK") for i in minted)  # RFC 3261 §8.1.1.7 magic cookie
