"""The federation's typed messages (:mod:`presence_node.federation.wire`):
each kind survives its own encoding, and every kind of bad body is one
error, :class:`Rejected`, whose reason labels the metric (``malformed``,
``unknown-kind``) and whose text names the field at fault."""

from __future__ import annotations

from typing import Any

import pytest

from presence_node.federation.wire import (
    Interest,
    Pub,
    Publications,
    Publish,
    Query,
    Rejected,
    State,
    SyncRequest,
    Tag,
    decode,
)

EVENTS = frozenset({"presence", "dialog"})
MAX_BODY = 16
KEY = ("bob@example.com", "presence")
PUB = Pub("bob@example.com", "presence", "n2.x.1", b"<p/>", "application/pidf+xml", 1e9 + 60, 1e9)


def roundtrip(msg: Any) -> Any:
    return decode(msg.kind, msg.body(), events=EVENTS, max_body=MAX_BODY)


@pytest.mark.parametrize(
    "msg",
    [
        State("loc2", (KEY, ("carol@example.com", "dialog")), (Tag("pres", "n2", 3, 1e9), Tag("dlg", None, 0, 0.0))),
        State("loc2", (), ()),
        Interest((KEY,), (), query=True),
        Interest((), (KEY,)),
        Publish(KEY, None, PUB),
        Publish(KEY, "n2.x.0", None),
        Query((KEY,)),
        SyncRequest((KEY,)),
        SyncRequest(None),
        Publications("answer", (KEY,), (PUB,)),
        Publications("sync", (KEY,), ()),
        Publications("sync", (), (), complete=(KEY,)),
    ],
    ids=lambda m: type(m).__name__,
)
def test_each_message_decodes_to_what_was_encoded(msg: Any):
    assert roundtrip(msg) == msg


def test_the_channels_own_kinds_carry_nothing_for_the_service():
    assert decode("hello", {}, events=EVENTS, max_body=MAX_BODY) is None
    assert decode("heartbeat", {}, events=EVENTS, max_body=MAX_BODY) is None


def test_an_unknown_kind_is_its_own_reason():
    with pytest.raises(Rejected) as e:
        decode("teleport", {}, events=EVENTS, max_body=MAX_BODY)
    assert e.value.reason == "unknown-kind" and "teleport" in str(e.value)


GOOD_PUB = PUB.encode()
PUBLISH = Publish(KEY, None, PUB).body()
STATE = State("loc2", (KEY,), (Tag("pres", "n2", 3, 1e9),)).body()
TAG = STATE["tags"][0]


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        # state
        ("state", dict(STATE, location=None), "location"),
        ("state", dict(STATE, interest="bob"), "interest"),
        ("state", dict(STATE, interest=[["bob@example.com", "presence", "x"]]), "interest"),
        ("state", dict(STATE, interest=[["bob@example.com", "message-summary"]]), "not federated"),
        ("state", dict(STATE, tags=None), "tags"),
        ("state", dict(STATE, tags=["pres"]), "tags"),
        ("state", dict(STATE, tags=[dict(TAG, epoch="1")]), "tags"),
        ("state", dict(STATE, tags=[dict(TAG, epoch=True)]), "tags"),
        ("state", dict(STATE, tags=[dict(TAG, owner=7)]), "tags"),
        ("state", dict(STATE, tags=[{k: v for k, v in TAG.items() if k != "owner"}]), "tags"),
        ("state", dict(STATE, tags=[dict(TAG, since=float("nan"))]), "tags"),
        # interest
        ("interest", {"remove": []}, "add"),
        ("interest", {"add": [], "remove": [["a@b"]]}, "remove"),
        ("interest", {"add": [[1, "presence"]], "remove": []}, "add"),
        ("interest", {"add": [], "remove": [], "query": "yes"}, "query"),
        # publish
        ("publish", dict(PUBLISH, key="bob@example.com"), "key"),
        ("publish", dict(PUBLISH, key=["bob@example.com", "winfo"]), "not federated"),
        ("publish", dict(PUBLISH, old=7), "old"),
        ("publish", dict(PUBLISH, key=["carol@example.com", "presence"]), "key"),
        ("publish", dict(PUBLISH, pub="x"), "pub"),
        ("publish", dict(PUBLISH, pub={k: v for k, v in GOOD_PUB.items() if k != "etag"}), "'etag'"),
        ("publish", dict(PUBLISH, pub=dict(GOOD_PUB, ct=None)), "'ct'"),
        ("publish", dict(PUBLISH, pub=dict(GOOD_PUB, body="not base64!")), "'body'"),
        ("publish", dict(PUBLISH, pub=dict(GOOD_PUB, exp="soon")), "'exp'"),
        ("publish", dict(PUBLISH, pub=dict(GOOD_PUB, rcv=float("inf"))), "'rcv'"),
        ("publish", dict(PUBLISH, pub=dict(GOOD_PUB, body="A" * 24)), "over 16 bytes"),
        # query and sync request
        ("query", {}, "keys"),
        ("query", {"keys": [["a@b", 1]]}, "keys"),
        ("sync_request", {"keys": "all"}, "keys"),
        # answer and sync
        ("answer", {"pubs": []}, "keys"),
        ("answer", {"keys": [list(KEY)]}, "pubs"),
        ("answer", {"keys": [list(KEY)], "pubs": [dict(GOOD_PUB, e="dialog;sla")]}, "not federated"),
        ("sync", {"keys": [], "pubs": [], "complete": "everything"}, "complete"),
        ("sync", {"keys": [], "pubs": [], "complete": [["a@b", "dialog;sla"]]}, "complete"),
    ],
)
def test_each_bad_body_is_malformed_with_the_field_named(kind: str, body: dict[str, Any], field: str):
    with pytest.raises(Rejected) as e:
        decode(kind, body, events=EVENTS, max_body=MAX_BODY)
    assert e.value.reason == "malformed"
    assert str(e.value).startswith(f"malformed: {kind}: ")
    assert field in str(e.value)
