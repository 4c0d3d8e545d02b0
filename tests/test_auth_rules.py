"""#15.3: per-presentity allow/deny lists of watchers, set through the
admin API: a denied watcher's SUBSCRIBE gets 403 whatever ``auth.watchers``
says, an allowed one passes it, and a watcher whose permission is
withdrawn has its subscriptions ended with terminated;reason=rejected
(S27, RFC 6665 §4.2.1.3)."""

from __future__ import annotations

import pytest

from wire import admin_url as url
from conftest import SECRET
from test_auth import auth_files  # noqa: F401  (fixture)
from test_auth_watchers import subscribe_as

AUTH = {"Authorization": f"Bearer {SECRET}"}


async def rule(http, node, presentity: str, watcher: str, allow: object, status: int = 200) -> dict:
    async with http.put(url(node, f"/presentities/{presentity}/watchers/{watcher}"), json={"allow": allow},
                        headers=AUTH) as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def test_s27_denied_watcher_gets_403_and_others_pass(make_node, make_client, auth_files, http):
    node = await make_node(auth={"mode": "digest", **auth_files})
    await rule(http, node, "bob@example.com", "alice@example.com", False)
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw")).code == 403
    assert (await subscribe_as(alice, "sip:carol@example.com", "alice-pw")).code == 200
    async with http.get(url(node, "/presentities/bob@example.com/watchers"), headers=AUTH) as r:
        assert (await r.json())["items"] == [{"watcher": "alice@example.com", "allow": False}]


async def test_allowed_watcher_passes_the_domain_policy(make_node, make_client, auth_files, http):
    node = await make_node(auth={"mode": "digest", "watchers": "domain", **auth_files})
    await rule(http, node, "carol@other.org", "alice@example.com", True)
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:carol@other.org", "alice-pw")).code == 200
    assert (await subscribe_as(alice, "sip:dave@other.org", "alice-pw")).code == 403


async def test_s27_withdrawn_permission_terminates_with_reason_rejected(make_node, make_client, auth_files, http):
    node = await make_node(auth={"mode": "digest", **auth_files})
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw")).code == 200
    await alice.wait_notifies(1)
    body = await rule(http, node, "bob@example.com", "alice@example.com", False)
    assert body["terminated"] == 1
    [*_, last] = await alice.wait_notifies(2)
    state = (last.headers.get("subscription-state") or "").replace(" ", "")
    assert state.startswith("terminated") and "reason=rejected" in state
    async with http.get(url(node, "/subscriptions?presentity=bob@example.com"), headers=AUTH) as r:
        assert (await r.json())["items"] == []


@pytest.mark.parametrize("allow", ["yes", None, 1])
async def test_bad_rule_is_400_and_stores_nothing(make_node, auth_files, http, allow):
    node = await make_node(auth={"mode": "digest", **auth_files})
    body = await rule(http, node, "bob@example.com", "alice@example.com", allow, status=400)
    assert "allow" in body["error"]
    async with http.get(url(node, "/presentities/bob@example.com/watchers"), headers=AUTH) as r:
        assert (await r.json())["items"] == []


async def test_rule_removed_with_delete(make_node, make_client, auth_files, http):
    node = await make_node(auth={"mode": "digest", **auth_files})
    await rule(http, node, "bob@example.com", "alice@example.com", False)
    async with http.delete(url(node, "/presentities/bob@example.com/watchers/alice@example.com"), headers=AUTH) as r:
        assert r.status == 204
    async with http.delete(url(node, "/presentities/bob@example.com/watchers/alice@example.com"), headers=AUTH) as r:
        assert r.status == 404
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw")).code == 200
