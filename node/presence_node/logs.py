"""Structured logging: one JSON object per line (or plain text), with any
``extra={...}`` fields of the call kept as keys."""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The call's ``extra={...}`` fields, as JSON-ready values."""
    return {
        k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        for k, v in record.__dict__.items()
        if k not in _STANDARD and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """Plain text that keeps the structured fields: ``key=value`` after the
    message (a value with spaces or quotes JSON-quoted), so ``--log-format
    text`` loses nothing the JSON lines carry."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        head, sep, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {pairs}{sep}{rest}"


def _text_value(v: object) -> str:
    text = "" if v is None else str(v)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n\t') else text


def json_line(msg: str, *, logger: str, **fields: object) -> str:
    """One JSON log line, for what goes to stdout instead of the log (the
    ready line), so that a JSON log collector reads it too."""
    record = logging.LogRecord(logger, logging.INFO, "", 0, msg, None, None)
    record.__dict__.update(fields)
    return JsonFormatter().format(record)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
