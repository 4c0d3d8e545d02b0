"""sip/digest.py: the request-digest against the RFCs' own examples, the
credentials parser, and the signed nonces (#15.1)."""

from __future__ import annotations

import pytest

from presence_node.sip import digest
from presence_node.sip.errors import ParseError

# RFC 7616 §3.9.1.
NONCE_7616 = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
CNONCE_7616 = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, expected: str) -> None:
    ha1 = digest.ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    got = digest.response(algorithm, ha1, NONCE_7616, "00000001", CNONCE_7616, "auth", "GET", "/dir/index.html")
    assert got == expected


def test_rfc2617_section_3_5_example() -> None:
    ha1 = digest.ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    got = digest.response(
        "MD5", ha1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth", "GET", "/dir/index.html"
    )
    assert got == "6629fae49393a05397450978507c4ef1"


def test_parse_the_rfc7616_authorization_header() -> None:
    value = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=SHA-256,'
        f' nonce="{NONCE_7616}", nc=00000001, cnonce="{CNONCE_7616}", qop=auth,'
        ' response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",'
        ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    c = digest.parse_credentials(value)
    assert (c.username, c.realm, c.uri, c.algorithm, c.qop, c.nonce_count) == (
        "Mufasa", "http-auth@example.org", "/dir/index.html", "SHA-256", "auth", 1
    )
    assert c.nonce == NONCE_7616 and c.cnonce == CNONCE_7616


def test_parse_quoted_escapes_and_default_md5() -> None:
    c = digest.parse_credentials(
        'digest username="a\\"b", realm="r", nonce="n", uri="sip:x@y", response="AB", qop=auth, nc=0000000a, cnonce="c"'
    )
    assert c.username == 'a"b' and c.algorithm == "MD5" and c.response == "ab" and c.nonce_count == 10


@pytest.mark.parametrize(
    "value",
    [
        'Basic dXNlcjpwYXNz',
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-512-256',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth-int, nc=00000001, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=00000001',
        'Digest username="a realm="r", nonce="n", uri="u", response="x"',
    ],
)
def test_bad_credentials_are_parse_errors(value: str) -> None:
    with pytest.raises(ParseError):
        digest.parse_credentials(value)


def test_challenge_offers_qop_auth_and_stale() -> None:
    assert digest.challenge('ex"ample', "N", "SHA-256") == (
        'Digest realm="ex\\"ample", nonce="N", algorithm=SHA-256, qop="auth"'
    )
    assert digest.challenge("r", "N", "MD5", stale=True).endswith(", stale=true")


def test_nonce_is_dated_and_signed() -> None:
    secret = b"s" * 32
    n = digest.make_nonce(secret, 1_700_000_000.25, "ab12")
    assert digest.nonce_issued(secret, n) == 1_700_000_000.25
    assert digest.nonce_issued(b"t" * 32, n) is None  # another cluster's
    forged = n.replace(n.split(".")[0], "%x" % 1_800_000_000_000, 1)
    assert digest.nonce_issued(secret, forged) is None  # a later date is not ours
    assert digest.nonce_issued(secret, "garbage") is None
