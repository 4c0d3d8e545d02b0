"""Numbers in headers are ASCII digits only: Python's int() also takes
'²', '٣' and '1_0', which must never reach it from the wire."""

import pytest

from presence_node.sip.errors import ParseError
from presence_node.sip.headers import parse_cseq, parse_expires
from presence_node.sip.parser import parse

BASE = (
    "OPTIONS sip:n@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx\r\n"
    "From: <sip:a@x>;tag=1\r\nTo: <sip:n@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
)


@pytest.mark.parametrize("value", ["²", "٣", "1_0", "-1", "+1", " "])
def test_expires_and_cseq_take_ascii_digits_only(value):
    with pytest.raises(ParseError):
        parse_expires(value)
    with pytest.raises(ParseError):
        parse_cseq(f"{value} PUBLISH")


@pytest.mark.parametrize("value", ["٣", "1_0", "-1", "²"])
def test_content_length_takes_ascii_digits_only(value):
    data = (BASE + f"Content-Length: {value}\r\n\r\nabc").encode()
    with pytest.raises(ParseError):
        parse(data)


def test_plain_numbers_still_parse():
    assert parse_expires("3600") == 3600
    assert parse_cseq("7 PUBLISH") == (7, "PUBLISH")
    assert parse((BASE + "Content-Length: 3\r\n\r\nabc").encode()).body == b"abc"
