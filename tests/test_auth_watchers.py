"""#15.3 (part): the watcher authorization policy, ``auth.watchers``: who an
authenticated watcher may SUBSCRIBE to (403 otherwise, RFC 6665 §4.2.1.3's
automated refusal, S27).  presence.winfo keeps D4: only the presentity."""

from __future__ import annotations

import pytest

from test_auth import answer, auth_files, challenges  # noqa: F401  (fixture)


async def subscribe_as(c, uri: str, password: str, event: str = "presence"):
    resp, _ = await c.subscribe(uri, event=event)
    assert resp.code == 401
    creds = answer(challenges(resp)[0], c.user, password, "SUBSCRIBE", uri)
    resp, _ = await c.subscribe(uri, event=event, extra=[creds])
    return resp


async def test_s27_everyone_by_default(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", **auth_files})
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:carol@other.org", "alice-pw")).code == 200


async def test_s27_same_domain_policy_refuses_another_domain(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "watchers": "domain", **auth_files})
    alice = await make_client("alice", target=node)
    resp = await subscribe_as(alice, "sip:carol@other.org", "alice-pw")
    assert resp.code == 403 and "may not watch" in resp.reason
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw")).code == 200


async def test_s27_subscribers_policy_refuses_unknown_presentities(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "watchers": "subscribers", **auth_files})
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:nobody@example.com", "alice-pw")).code == 403
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw")).code == 200


async def test_winfo_stays_the_presentitys_own_whatever_the_policy(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "watchers": "everyone", **auth_files})
    alice = await make_client("alice", target=node)
    assert (await subscribe_as(alice, "sip:bob@example.com", "alice-pw", "presence.winfo")).code == 403
    assert (await subscribe_as(alice, "sip:alice@example.com", "alice-pw", "presence.winfo")).code == 200
