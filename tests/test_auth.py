"""#15.1, #15.2, #15.4: digest authentication of PUBLISH, SUBSCRIBE and
REGISTER, the identity check, trusted sources, through real sockets.

Each refusal of the issue has its test: no credentials 401, wrong password
401, replayed nonce 401 stale, expired nonce 401 stale, wrong identity 403;
and the bound on what an unauthenticated packet can make the node hold.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from pathlib import Path

import pytest

from bodies import pidf
from presence_node.service.auth import user_line
from presence_node.sip import digest
from presence_node.sip.message import Response
from sipclient import SipClient
from wire import parse_metrics

NONCE_SECRET = "nonce-secret-0123456789abcdef"


@pytest.fixture
def auth_files(tmp_path: Path) -> dict[str, str]:
    users = tmp_path / "users"
    users.write_text(
        "# AOR REALM HA1-MD5 HA1-SHA256\n"
        + user_line("alice@example.com", "example.com", "alice-pw") + "\n"
        + user_line("bob@example.com", "example.com", "bob-pw") + "\n"
    )
    secret = tmp_path / "nonce-secret"
    secret.write_text(NONCE_SECRET)
    return {"users_file": str(users), "nonce_secret_file": str(secret)}


@pytest.fixture
async def auth_node(make_node, auth_files):
    return await make_node(auth={"mode": "digest", **auth_files})


_counter = itertools.count(1)


def answer(challenge_value: str, user: str, password: str, method: str, uri: str, *, nc: int = 1,
           header: str = "Authorization", nonce: str | None = None) -> tuple[str, str]:
    """Credentials answering a challenge (as a phone computes them)."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge_value))
    algorithm, realm = params["algorithm"], params["realm"]
    nonce = nonce or params["nonce"]
    cnonce = uuid.uuid4().hex[:16]
    ha1 = digest.ha1(algorithm, user, realm, password)
    resp = digest.response(algorithm, ha1, nonce, f"{nc:08x}", cnonce, "auth", method, uri)
    return header, (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}",'
        f' algorithm={algorithm}, qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
    )


def challenges(resp: Response, header: str = "www-authenticate") -> list[str]:
    return resp.headers.lines(header)


async def publish_with(c: SipClient, creds: tuple[str, str] | None, *, uri: str | None = None,
                       from_uri: str | None = None) -> Response:
    uri = uri or c.aor
    hs = [("Event", "presence"), ("Expires", "60"), ("Content-Type", "application/pidf+xml")]
    if creds:
        hs.append(creds)
    return await c.request(c.build("PUBLISH", uri, hs, pidf(uri), from_uri=from_uri))


async def test_publish_without_credentials_is_challenged_sha256_then_md5(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    resp = await publish_with(alice, None)
    assert resp.code == 401
    offered = challenges(resp)
    assert [re.search(r"algorithm=([\w-]+)", v).group(1) for v in offered] == ["SHA-256", "MD5"]
    assert all('realm="example.com"' in v and 'qop="auth"' in v and "stale" not in v for v in offered)


@pytest.mark.parametrize("which", [0, 1], ids=["sha256", "md5"])
async def test_publish_with_right_password_is_accepted(auth_node, make_client, which):
    alice = await make_client("alice", target=auth_node)
    chal = challenges(await publish_with(alice, None))[which]
    resp = await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor))
    assert resp.code == 200


async def test_subscribe_and_notify_once_authenticated(auth_node, make_client):
    bob = await make_client("bob", target=auth_node)
    resp, _ = await bob.subscribe("sip:alice@example.com")
    assert resp.code == 401
    creds = answer(challenges(resp)[0], "bob", "bob-pw", "SUBSCRIBE", "sip:alice@example.com")
    resp, d = await bob.subscribe("sip:alice@example.com", extra=[creds])
    assert resp.code == 200
    await bob.wait_notifies(1)


async def test_wrong_password_is_401_not_stale_and_counted(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    chal = challenges(await publish_with(alice, None))[0]
    resp = await publish_with(alice, answer(chal, "alice", "wrong", "PUBLISH", alice.aor))
    assert resp.code == 401
    assert all("stale" not in v for v in challenges(resp))
    m = parse_metrics((await auth_node.metrics_text()).decode())
    assert m[("sip_auth_results_total", (("result", "failed"),))] == 1


async def test_unknown_user_is_401(auth_node, make_client):
    eve = await make_client("eve", target=auth_node)
    chal = challenges(await publish_with(eve, None))[0]
    assert (await publish_with(eve, answer(chal, "eve", "x", "PUBLISH", eve.aor))).code == 401


async def test_replayed_nonce_count_is_401_stale_and_a_higher_count_passes(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    chal = challenges(await publish_with(alice, None))[0]
    first = answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, nc=1)
    assert (await publish_with(alice, first)).code == 200
    replay = await publish_with(alice, first)  # the same credentials, a new transaction
    assert replay.code == 401 and all("stale=true" in v for v in challenges(replay))
    again = answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, nc=2)
    assert (await publish_with(alice, again)).code == 200


async def test_expired_nonce_is_401_stale(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "nonce_lifetime": 5, **auth_files})
    alice = await make_client("alice", target=node)
    chal = challenges(await publish_with(alice, None))[0]
    old = digest.make_nonce(NONCE_SECRET.encode(), time.time() - 6, "00ff")
    resp = await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, nonce=old))
    assert resp.code == 401 and all("stale=true" in v for v in challenges(resp))
    fresh = digest.make_nonce(NONCE_SECRET.encode(), time.time() - 1, "00fe")
    resp = await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, nonce=fresh))
    assert resp.code == 200  # signed with the shared secret: any node's nonce is good


async def test_nonce_not_signed_by_the_cluster_is_stale(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    chal = challenges(await publish_with(alice, None))[0]
    forged = digest.make_nonce(b"another-secret-0123456789", time.time(), "00ff")
    resp = await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, nonce=forged))
    assert resp.code == 401 and all("stale=true" in v for v in challenges(resp))


async def test_publish_for_another_presentity_is_403(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    bob_uri = "sip:bob@example.com"
    chal = challenges(await publish_with(alice, None, uri=bob_uri))[0]
    # Alice's own From, but To and Request-URI bob's.
    resp = await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", bob_uri), uri=bob_uri)
    assert resp.code == 403 and "may not act" in resp.reason


async def test_subscribe_with_another_from_is_403(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    uri = "sip:carol@example.com"
    resp = await alice.request(alice.build("SUBSCRIBE", uri, [("Event", "presence")], from_uri="sip:bob@example.com"))
    creds = answer(challenges(resp)[0], "alice", "alice-pw", "SUBSCRIBE", uri)
    resp = await alice.request(
        alice.build("SUBSCRIBE", uri, [("Event", "presence"), creds], from_uri="sip:bob@example.com")
    )
    assert resp.code == 403


async def test_register_only_for_ones_own_aor(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)

    async def register(to: str, creds: tuple[str, str] | None) -> Response:
        hs = [("Expires", "600")] + ([creds] if creds else [])
        return await alice.request(alice.build("REGISTER", "sip:example.com", hs, to=to))

    resp = await register(alice.aor, None)
    assert resp.code == 401
    chal = challenges(resp)[0]
    assert (await register("sip:bob@example.com", answer(chal, "alice", "alice-pw", "REGISTER", "sip:example.com"))).code == 403
    assert (await register(alice.aor, answer(chal, "alice", "alice-pw", "REGISTER", "sip:example.com", nc=2))).code == 200


async def test_proxy_mode_is_407_proxy_authenticate(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "proxy", **auth_files})
    alice = await make_client("alice", target=node)
    resp = await publish_with(alice, None)
    assert resp.code == 407 and len(challenges(resp, "proxy-authenticate")) == 2
    chal = challenges(resp, "proxy-authenticate")[0]
    creds = answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, header="Proxy-Authorization")
    assert (await publish_with(alice, creds)).code == 200


async def test_trusted_source_skips_digest(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "trusted_sources": ["127.0.0.0/8"], **auth_files})
    alice = await make_client("alice", target=node)
    assert (await publish_with(alice, None)).code == 200


async def test_untrusted_source_is_still_challenged(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "trusted_sources": ["10.0.0.0/8", "::1"], **auth_files})
    alice = await make_client("alice", target=node)
    assert (await publish_with(alice, None)).code == 401


async def test_failed_attempts_are_rate_limited_per_source(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "failure_rate": 0.1, "failure_burst": 3, **auth_files})
    alice = await make_client("alice", target=node)
    chal = challenges(await publish_with(alice, None))[0]
    for _ in range(3):
        assert (await publish_with(alice, answer(chal, "alice", "guess", "PUBLISH", alice.aor))).code == 401
    resp = await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor))
    assert resp.code == 403 and "too many failed" in resp.reason  # even the right password, until it refills


async def test_malformed_credentials_are_400(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    resp = await publish_with(alice, ("Authorization", 'Digest username="alice", realm="example.com"'))
    assert resp.code == 400 and "Digest" in resp.reason


async def test_unauthenticated_packets_do_not_grow_the_nonce_table(auth_node, make_client):
    alice = await make_client("alice", target=auth_node)
    chal = challenges(await publish_with(alice, None))[0]
    for i in range(20):
        await publish_with(alice, None)
        forged = digest.make_nonce(b"x" * 32, time.time(), f"{i:04x}")
        await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor, nonce=forged))
    m = parse_metrics((await auth_node.metrics_text()).decode())
    assert m[("sip_auth_tracked_nonces", ())] == 0
    assert (await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor))).code == 200
    m = parse_metrics((await auth_node.metrics_text()).decode())
    assert m[("sip_auth_tracked_nonces", ())] == 1


async def test_off_by_default_and_says_so(make_node, make_client, caplog):
    with caplog.at_level(logging.WARNING):
        node = await make_node()
    assert any("authentication is off" in r.getMessage() for r in caplog.records)
    alice = await make_client("alice", target=node)
    assert (await publish_with(alice, None)).code == 200


def test_cli_hash_prints_a_users_file_line(tmp_path: Path, capsys):
    from presence_node.cli import main
    from presence_node.service.auth import load_users

    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert main(["users", "hash", "carol@Example.com", "--password-file", str(pw)]) == 0
    line = capsys.readouterr().out
    assert "s3cret" not in line
    users = tmp_path / "users"
    users.write_text(line)
    carol = load_users(users)[("carol", "example.com")]
    assert carol.aor == "carol@example.com"
    assert carol.ha1_sha256 == digest.ha1("SHA-256", "carol", "example.com", "s3cret")


def test_digest_without_users_and_database_is_a_config_error():
    from presence_node.config import ConfigError, load

    with pytest.raises(ConfigError, match="users_file"):
        load(None, {"auth": {"mode": "digest"}})


def test_bad_users_file_names_the_line(tmp_path: Path):
    from presence_node.service.auth import AuthConfigError, load_users

    users = tmp_path / "users"
    users.write_text("# ok\nalice@example.com example.com nothex\n")
    with pytest.raises(AuthConfigError, match=":2:"):
        load_users(users)


async def test_algorithms_setting_orders_the_challenges_and_refuses_others(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "algorithms": ["SHA-256"], **auth_files})
    alice = await make_client("alice", target=node)
    resp = await publish_with(alice, None)
    assert len(challenges(resp)) == 1 and "algorithm=SHA-256" in challenges(resp)[0]
    md5 = challenges(resp)[0].replace("SHA-256", "MD5")
    resp = await publish_with(alice, answer(md5, "alice", "alice-pw", "PUBLISH", alice.aor))
    assert resp.code == 401  # MD5 credentials where only SHA-256 is allowed: challenged again


async def test_tracked_nonces_are_bounded_and_a_forgotten_one_is_stale(make_node, make_client, auth_files):
    node = await make_node(auth={"mode": "digest", "max_tracked_nonces": 16, **auth_files})
    alice = await make_client("alice", target=node)
    first = challenges(await publish_with(alice, None))[0]
    assert (await publish_with(alice, answer(first, "alice", "alice-pw", "PUBLISH", alice.aor))).code == 200
    for _ in range(20):
        chal = challenges(await publish_with(alice, None))[0]
        assert (await publish_with(alice, answer(chal, "alice", "alice-pw", "PUBLISH", alice.aor))).code == 200
    m = parse_metrics((await node.metrics_text()).decode())
    assert m[("sip_auth_tracked_nonces", ())] == 16
    # The first nonce was forgotten: its next count cannot be told from a
    # replay, so it is stale (the client takes the fresh nonce).
    resp = await publish_with(alice, answer(first, "alice", "alice-pw", "PUBLISH", alice.aor, nc=2))
    assert resp.code == 401 and all("stale=true" in v for v in challenges(resp))
