"""Watcher information documents (S58, S60-S63)."""

from __future__ import annotations

import pytest
from lxml import etree

from presence_node.packages.base import UnsupportedBody, WatcherView
from presence_node.packages.winfo import WatcherInfoPackage, watcherinfo

WI = "urn:ietf:params:xml:ns:watcherinfo"
NS = {"w": WI}
RESOURCE = "sip:alice@example.com"

WATCHERS = [
    WatcherView(id="a8f3k2", uri="sip:bob@example.com", status="active", event="subscribe"),
    WatcherView(id="q9x0m1", uri="sip:carol@example.com", status="terminated", event="timeout"),
]


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def test_s58_package_attributes() -> None:
    pkg = WatcherInfoPackage()
    assert pkg.name == "presence.winfo"
    assert pkg.content_types == ("application/watcherinfo+xml",)
    assert not pkg.publishable
    with pytest.raises(UnsupportedBody) as err:
        pkg.check_publication(b"<watcherinfo/>", "application/watcherinfo+xml")
    assert err.value.status_hint == 415


def test_s62_watcher_list_shape() -> None:
    doc = watcherinfo(RESOURCE, "presence", WATCHERS, full=True)
    assert doc.content_type == "application/watcherinfo+xml"
    root = parse(doc.render(0))
    assert root.tag == f"{{{WI}}}watcherinfo"
    assert (root.get("version"), root.get("state")) == ("0", "full")
    lists = root.findall("w:watcher-list", NS)
    assert len(lists) == 1
    assert (lists[0].get("resource"), lists[0].get("package")) == (RESOURCE, "presence")
    got = [(w.get("id"), w.get("status"), w.get("event"), w.text) for w in lists[0].findall("w:watcher", NS)]
    assert got == [(w.id, w.status, w.event, w.uri) for w in WATCHERS]


def test_s60_partial_and_empty_documents() -> None:
    partial = parse(watcherinfo(RESOURCE, "presence", WATCHERS[1:], full=False).render(3))
    assert partial.get("state") == "partial"
    assert [w.get("id") for w in partial.iterfind("w:watcher-list/w:watcher", NS)] == ["q9x0m1"]
    empty = parse(watcherinfo(RESOURCE, "presence", [], full=True).render(0))
    assert empty.find("w:watcher-list", NS).get("resource") == RESOURCE
    assert empty.findall("w:watcher-list/w:watcher", NS) == []


def test_s61_version_spliced_per_subscription() -> None:
    doc = watcherinfo(RESOURCE, "presence", WATCHERS, full=True)
    assert [parse(doc.render(v)).get("version") for v in (0, 1, 2, 4294967295)] == [
        "0",
        "1",
        "2",
        "4294967295",
    ]


def test_s62_untrusted_values_escaped() -> None:
    evil = WatcherView(
        id='x"><watcher id="forged',
        uri='sip:"Mallory" <sip:m@evil.example>&amp;</watcher><watcher>\x07',
        status="pending",
        event="subscribe",
    )
    root = parse(watcherinfo('sip:a"b@example.com', "presence", [evil], full=True).render(0))
    watchers = root.findall("w:watcher-list/w:watcher", NS)
    assert len(watchers) == 1
    assert watchers[0].get("id") == evil.id
    assert watchers[0].text == evil.uri.replace("\x07", "\ufffd")
    assert root.find("w:watcher-list", NS).get("resource") == 'sip:a"b@example.com'


def test_s63_document_method_matches_function() -> None:
    pkg = WatcherInfoPackage()
    assert pkg.document(RESOURCE, "presence", WATCHERS, True) == watcherinfo(
        RESOURCE, "presence", WATCHERS, True
    )
