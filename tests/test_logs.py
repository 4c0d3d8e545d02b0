"""The log formats: JSON lines and plain text carry the same structured
fields (issue #14.5: the text format used to drop them)."""

from __future__ import annotations

import json
import logging
import sys

from presence_node.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("presence_node.test", logging.WARNING, __file__, 1, "subscription removed", None, None)
    r.__dict__.update(extra)
    return r


def test_text_lines_keep_the_structured_fields():
    line = TextFormatter().format(record(sub="n1.abc", code=481, peer="a b", empty=""))
    assert line.endswith('WARNING presence_node.test: subscription removed sub=n1.abc code=481 peer="a b" empty=""')
    assert json.loads(JsonFormatter().format(record(sub="n1.abc", code=481)))["code"] == 481


def test_a_line_without_fields_is_unchanged_and_a_traceback_follows_the_fields():
    assert TextFormatter().format(record()).endswith("presence_node.test: subscription removed")
    try:
        raise ValueError("boom")
    except ValueError:
        r = record(sub="x")
        r.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(r).splitlines()
    assert first.endswith("subscription removed sub=x") and rest[-1] == "ValueError: boom"
