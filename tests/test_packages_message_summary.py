"""The message-summary package (RFC 3842, MWI) as a pure unit: the body
grammar of §5.2 and composition of a presentity's publications."""

from __future__ import annotations

import pytest

from presence_node.packages.base import BadBody, UnsupportedBody
from presence_node.packages.message_summary import MWI_TYPE, MessageSummaryPackage

ENTITY = "sip:alice@example.com"

# RFC 3842 §6's example body, as a voicemail server publishes it.
RFC_EXAMPLE = (
    b"Messages-Waiting: yes\r\n"
    b"Message-Account: sip:alice@vmail.example.com\r\n"
    b"Voice-Message: 4/8 (1/2)\r\n"
    b"\r\n"
    b"To: <alice@atlanta.example.com>\r\n"
    b"From: <bob@biloxi.example.com>\r\n"
    b"Subject: carpool tomorrow?\r\n"
    b"Date: Sun, 09 May 2004 16:13:25 -0700\r\n"
    b"Priority: normal\r\n"
    b"Message-ID: 13948328@vmail.example.com\r\n"
)


@pytest.fixture
def pkg() -> MessageSummaryPackage:
    return MessageSummaryPackage()


def test_rfc3842_event_name_and_type(pkg: MessageSummaryPackage) -> None:
    assert (pkg.name, pkg.content_types, pkg.publishable) == (
        "message-summary", ("application/simple-message-summary",), True)


@pytest.mark.parametrize("body", [
    RFC_EXAMPLE,
    b"Messages-Waiting: no\r\n",
    b"messages-waiting:YES\nvoice-message: 0/0\n",  # case and bare LF, as some servers send
    b"Messages-Waiting: yes\r\nVoice-Message: 2/0\r\nFax-Message: 1/3 (0/1)\r\nNone: 0/0\r\n",
    b"Messages-Waiting: yes\r\nX-Vendor: 7\r\n",  # an extension line passes
])
def test_rfc3842_valid_bodies_stored_unchanged(pkg: MessageSummaryPackage, body: bytes) -> None:
    assert pkg.check_publication(body, MWI_TYPE) == body


@pytest.mark.parametrize(("body", "why"), [
    (b"", "Messages-Waiting"),
    (b"Voice-Message: 1/0\r\n", "Messages-Waiting"),
    (b"Messages-Waiting: maybe\r\n", "yes or no"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 1\r\n", "Voice-Message"),
    (b"Messages-Waiting: yes\r\nVoice-Message: -1/0\r\n", "Voice-Message"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 1/0 (0/x)\r\n", "Voice-Message"),
    (b"Messages-Waiting: yes\r\nVoice-Message: 99999999999/0\r\n", "Voice-Message"),
    (b"Messages-Waiting: yes\r\nMessage-Account: not a uri\r\n", "Message-Account"),
    (b"Messages-Waiting: yes\r\nno colon here\r\n", "line 2"),
    (b"Messages-Waiting: yes\r\nMessages-Waiting: no\r\n", "once"),
    (b"Messages-Waiting: yes\r\n\xff\xfe\r\n", "UTF-8"),
    (b"Messages-Waiting: yes\x00\r\n", "control"),
])
def test_rfc3842_bad_bodies_get_400_with_a_reason(pkg: MessageSummaryPackage, body: bytes, why: str) -> None:
    with pytest.raises(BadBody) as err:
        pkg.check_publication(body, MWI_TYPE)
    assert err.value.status_hint == 400
    assert why in err.value.reason


def test_rfc3842_other_content_type_is_415(pkg: MessageSummaryPackage) -> None:
    with pytest.raises(UnsupportedBody) as err:
        pkg.check_publication(b"Messages-Waiting: no\r\n", "text/plain")
    assert ("Accept", MWI_TYPE) in err.value.headers


def test_rfc3842_no_publication_means_no_messages_waiting(pkg: MessageSummaryPackage) -> None:
    doc = pkg.compose(ENTITY, [])
    assert doc.content_type == MWI_TYPE
    assert doc.render(0) == b"Messages-Waiting: no\r\n"


def test_rfc3842_newest_publication_is_the_state(pkg: MessageSummaryPackage) -> None:
    """One mailbox has one summary: of several live publications (a voicemail
    server that lost its etag published afresh) the newest counts."""
    old = b"Messages-Waiting: yes\r\nVoice-Message: 1/0\r\n"
    new = b"Messages-Waiting: no\r\nVoice-Message: 0/1\r\n"
    assert pkg.compose(ENTITY, [old, new]).render(3) == new
    assert pkg.compose(ENTITY, [RFC_EXAMPLE]).render(0) == RFC_EXAMPLE
