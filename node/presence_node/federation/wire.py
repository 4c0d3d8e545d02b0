"""The cluster channel's messages, sans I/O: sealing, opening, ordering.

A message is ``MAC || JSON``: a 32-byte HMAC-SHA256, keyed with the cluster
secret, over the JSON envelope.  The envelope names the cluster, the sender,
the one receiver it is meant for, the receiver's challenge for this
connection (``nonce``, fresh random bytes sent when the connection opens),
the sender's boot (start time in ms), a per-link sequence number and a
timestamp.  The nonce binds every message to one connection of one run of
the receiver: a recording played again, even to a receiver that restarted
and forgot the sequence numbers, is refused.  So a receiver can refuse, and
count, each kind of bad input without applying it:

- ``malformed``: not ``MAC || JSON`` of the right shape;
- ``forged``: the MAC does not match (wrong secret or altered bytes);
- ``wrong-cluster`` / ``misdirected`` / ``unknown-peer``: an authentic
  message of another cluster, meant for another node, or from a node not
  in our membership;
- ``stale``: its timestamp is outside the skew window;
- ``replayed``: sealed for another connection (another nonce), or its
  (boot, sequence) is not above the last one delivered from that sender, or
  its boot is older than the sender's current one.

An admitted envelope's body is then decoded (:func:`decode`) into one typed
message, or refused as ``malformed`` / ``unknown-kind``: the federation
service only ever sees well-formed messages.

Sequence numbers run per link (sender, receiver), over every message, so a
receiver that sees one skipped knows it lost something (a message sent while
the link was down) and asks the sender for a resync: delivery is not
best-effort.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Union

MAC_SIZE = 32
VERSION = 2


class Rejected(ValueError):
    """A message that must not be applied; ``reason`` labels the metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Envelope:
    cluster: str
    sender: str
    receiver: str
    nonce: str
    boot: int
    seq: int
    ts: float
    kind: str
    body: dict[str, Any]


def seal(secret: bytes, env: Envelope) -> bytes:
    payload = json.dumps(
        {
            "v": VERSION,
            "cluster": env.cluster,
            "from": env.sender,
            "to": env.receiver,
            "nonce": env.nonce,
            "boot": env.boot,
            "seq": env.seq,
            "ts": env.ts,
            "kind": env.kind,
            "body": env.body,
        },
        separators=(",", ":"),
    ).encode()
    return hmac.new(secret, payload, hashlib.sha256).digest() + payload


def unseal(secret: bytes, data: bytes) -> Envelope:
    """Authenticate and decode; raise :class:`Rejected` (no state is touched)."""
    if len(data) <= MAC_SIZE:
        raise Rejected("malformed", "too short")
    mac, payload = data[:MAC_SIZE], data[MAC_SIZE:]
    if not hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).digest()):
        raise Rejected("forged")
    try:
        d = json.loads(payload)
        env = Envelope(
            _str(d["cluster"]), _str(d["from"]), _str(d["to"]), _str(d["nonce"]), _int(d["boot"]), _int(d["seq"]),
            _num(d["ts"]), _str(d["kind"]), d["body"],
        )
    except (ValueError, KeyError, TypeError) as e:
        raise Rejected("malformed", str(e)) from e
    if d.get("v") != VERSION or not isinstance(env.body, dict):
        raise Rejected("malformed", "unknown version or body")
    return env


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("expected a string")
    return v


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise TypeError("expected a non-negative integer")
    return v


def _num(v: Any) -> float:
    # json.loads accepts NaN and Infinity; NaN would pass any comparison
    # (the skew check), so only finite numbers are timestamps.
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise TypeError("expected a finite number")
    return float(v)


# -- messages ------------------------------------------------------------------
#
# What the federation service says to its peers, one frozen type per kind.
# ``body()`` is the JSON body sent; :func:`decode` is its inverse and the one
# place that checks a received body: every field, before anything is applied.

Key = tuple[str, str]  # (presentity, event)

#: The channel's own kinds: the connection's hello and the idle heartbeat
#: carry nothing for the service (only their sequence numbers count).
CHANNEL_KINDS = frozenset({"hello", "heartbeat"})


@dataclass(frozen=True, slots=True)
class Pub:
    """One live publication as it crosses the channel; the receiver adds
    the sharing tag and origin (its own view of who sent it)."""

    presentity: str
    event: str
    etag: str
    body: bytes
    content_type: str
    expires_at: float
    received_at: float

    def encode(self) -> dict[str, Any]:
        return {
            "p": self.presentity,
            "e": self.event,
            "etag": self.etag,
            "body": base64.b64encode(self.body).decode(),
            "ct": self.content_type,
            "exp": self.expires_at,
            "rcv": self.received_at,
        }


@dataclass(frozen=True, slots=True)
class Tag:
    """A sharing tag as a peer reports it (its owner, fencing epoch and since when)."""

    name: str
    owner: str | None
    epoch: int
    since: float

    def encode(self) -> dict[str, Any]:
        return {"tag": self.name, "owner": self.owner, "epoch": self.epoch, "since": self.since}


@dataclass(frozen=True, slots=True)
class State:
    """The sender's location, its full interest and its tags (on connect,
    on every resync and when its tags change)."""

    kind: ClassVar[str] = "state"
    location: str
    interest: tuple[Key, ...]
    tags: tuple[Tag, ...]

    def body(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "interest": _encode_keys(self.interest),
            "tags": [t.encode() for t in self.tags],
        }


@dataclass(frozen=True, slots=True)
class Interest:
    """A change of interest; ``query``: the added keys are also a query."""

    kind: ClassVar[str] = "interest"
    add: tuple[Key, ...]
    remove: tuple[Key, ...]
    query: bool = False

    def body(self) -> dict[str, Any]:
        return {"add": _encode_keys(self.add), "remove": _encode_keys(self.remove), "query": self.query}


@dataclass(frozen=True, slots=True)
class Publish:
    """An accepted PUBLISH or an expiry: ``pub`` (None: removed) replaces
    the publication with etag ``old`` (None: a new one)."""

    kind: ClassVar[str] = "publish"
    key: Key
    old: str | None
    pub: Pub | None

    def body(self) -> dict[str, Any]:
        return {"key": list(self.key), "old": self.old, "pub": self.pub.encode() if self.pub is not None else None}


@dataclass(frozen=True, slots=True)
class Query:
    """Who holds these keys by SIP?"""

    kind: ClassVar[str] = "query"
    keys: tuple[Key, ...]

    def body(self) -> dict[str, Any]:
        return {"keys": _encode_keys(self.keys)}


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Send what your location holds of ``keys`` (None: everything)."""

    kind: ClassVar[str] = "sync_request"
    keys: tuple[Key, ...] | None

    def body(self) -> dict[str, Any]:
        return {"keys": None if self.keys is None else _encode_keys(self.keys)}


@dataclass(frozen=True, slots=True)
class Publications:
    """An ``answer`` to a query or a ``sync`` batch: the sender's location
    holds exactly ``pubs`` for ``keys``.  A full sync's last batch names
    every key it holds (``complete``), so the receiver drops the others."""

    kind: Literal["answer", "sync"]
    keys: tuple[Key, ...]
    pubs: tuple[Pub, ...]
    complete: tuple[Key, ...] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"keys": _encode_keys(self.keys), "pubs": [p.encode() for p in self.pubs]}
        if self.complete is not None:
            body["complete"] = _encode_keys(self.complete)
        return body


Message = Union[State, Interest, Publish, Query, SyncRequest, Publications]


def decode(kind: str, body: dict[str, Any], *, events: frozenset[str], max_body: int) -> Message | None:
    """The typed message of an admitted envelope (None for the channel's
    own kinds); raise :class:`Rejected` ``unknown-kind`` or ``malformed``,
    with the field at fault.  ``events``: the packages federated here (a key
    of any other is malformed); ``max_body``: the largest publication body."""
    if kind in CHANNEL_KINDS:
        return None
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise Rejected("unknown-kind", kind)
    try:
        return decoder(_Fields(kind, body, events, max_body))
    except _Bad as e:
        raise Rejected("malformed", f"{kind}: {e}") from None


class _Bad(Exception):
    """A field at fault, inside :func:`decode` only."""


@dataclass(frozen=True, slots=True)
class _Fields:
    """A received body, and what checking its fields needs to know."""

    kind: str
    body: dict[str, Any]
    events: frozenset[str]
    max_body: int

    def keys(self, name: str, raw: Any = None) -> tuple[Key, ...]:
        raw = self.body.get(name) if raw is None else raw
        if not isinstance(raw, list):
            raise _Bad(f"{name}: expected a list")
        out = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise _Bad(f"{name}: a key is a [presentity, event] pair")
            if item[1] not in self.events:
                raise _Bad(f"{name}: event {item[1]!r} is not federated here")
            out.append((item[0], item[1]))
        return tuple(out)

    def optional_keys(self, name: str) -> tuple[Key, ...] | None:
        return None if self.body.get(name) is None else self.keys(name)

    def items(self, name: str) -> list[Any]:
        raw = self.body.get(name)
        if not isinstance(raw, list):
            raise _Bad(f"{name}: expected a list")
        return raw

    def pub(self, raw: Any) -> Pub:
        if not isinstance(raw, dict):
            raise _Bad("pub: expected an object")
        name = ""
        try:
            presentity, event, etag, content_type = (_str(raw[name := k]) for k in ("p", "e", "etag", "ct"))
            body = base64.b64decode(_str(raw[name := "body"]), validate=True)
            expires_at, received_at = _num(raw[name := "exp"]), _num(raw[name := "rcv"])
        except KeyError:
            raise _Bad(f"pub: no {name!r}") from None
        except (TypeError, ValueError, binascii.Error) as e:
            raise _Bad(f"pub: {name!r}: {e}") from None
        if event not in self.events:
            raise _Bad(f"pub: event {event!r} is not federated here")
        if len(body) > self.max_body:
            raise _Bad(f"pub: body over {self.max_body} bytes")
        return Pub(presentity, event, etag, body, content_type, expires_at, received_at)


def _tag(raw: Any) -> Tag:
    try:
        if not isinstance(raw, dict):
            raise TypeError("expected an object")
        owner = raw["owner"]
        return Tag(_str(raw["tag"]), None if owner is None else _str(owner), _int(raw["epoch"]), _num(raw["since"]))
    except (KeyError, TypeError) as e:
        raise _Bad(f"tags: {e}") from None


def _decode_state(f: _Fields) -> State:
    location = f.body.get("location")
    if not isinstance(location, str):
        raise _Bad("location: expected a string")
    return State(location, f.keys("interest"), tuple(_tag(t) for t in f.items("tags")))


def _decode_interest(f: _Fields) -> Interest:
    query = f.body.get("query", False)
    if not isinstance(query, bool):
        raise _Bad("query: expected a boolean")
    return Interest(f.keys("add"), f.keys("remove"), query)


def _decode_publish(f: _Fields) -> Publish:
    (key,) = f.keys("key", [f.body.get("key")])
    old = f.body.get("old")
    if old is not None and not isinstance(old, str):
        raise _Bad("old: expected a string or null")
    raw = f.body.get("pub")
    pub = None if raw is None else f.pub(raw)
    if pub is not None and (pub.presentity, pub.event) != key:
        raise _Bad("key: not the publication's")
    return Publish(key, old, pub)


def _decode_publications(f: _Fields) -> Publications:
    kind: Literal["answer", "sync"] = "answer" if f.kind == "answer" else "sync"
    return Publications(kind, f.keys("keys"), tuple(f.pub(p) for p in f.items("pubs")), f.optional_keys("complete"))


_DECODERS: dict[str, Callable[[_Fields], Message]] = {
    "state": _decode_state,
    "interest": _decode_interest,
    "publish": _decode_publish,
    "query": lambda f: Query(f.keys("keys")),
    "sync_request": lambda f: SyncRequest(f.optional_keys("keys")),
    "answer": _decode_publications,
    "sync": _decode_publications,
}


def _encode_keys(keys: tuple[Key, ...]) -> list[list[str]]:
    return [list(k) for k in keys]


# -- framing -------------------------------------------------------------------
#
# The receiver's WebSocket accepts messages of at most ``max_frame`` bytes,
# a bound set before the peer is known.  Each frame starts with a flag byte:
# MORE (a chunk, the message continues) or LAST; a sender cuts a larger
# message into chunks, and only an authenticated connection may send them.

MORE = 0
LAST = 1
_MORE, _LAST = bytes([MORE]), bytes([LAST])


def frames(data: bytes, max_frame: int) -> list[bytes]:
    """``data`` as frames of at most ``max_frame`` bytes, flag included."""
    size = max_frame - 1
    if len(data) <= size:
        return [_LAST + data]
    n = -(-len(data) // size)
    return [(_LAST if i == n - 1 else _MORE) + data[i * size : (i + 1) * size] for i in range(n)]


def challenge(nonce: str, max_frame: int) -> bytes:
    """The receiver's first frame on a new connection: the nonce every
    message on it must carry, and the frame size it accepts."""
    return json.dumps({"v": VERSION, "nonce": nonce, "max_frame": max_frame}).encode()


def read_challenge(data: bytes) -> tuple[str, int]:
    try:
        d = json.loads(data)
        nonce, max_frame = _str(d["nonce"]), _int(d["max_frame"])
    except (ValueError, KeyError, TypeError) as e:
        raise Rejected("malformed", f"challenge: {e}") from e
    if d.get("v") != VERSION or max_frame < 64:
        raise Rejected("malformed", "challenge: unknown version or frame size")
    return nonce, max_frame


@dataclass(slots=True)
class _Inbound:
    boot: int
    last: int


@dataclass
class Admission:
    """The receiving side's checks after the MAC: who, where, when, order.

    ``admit`` returns how many messages were skipped before this one (0 in
    order), so the caller can ask for a resync; it raises :class:`Rejected`
    for anything not to apply.  It records nothing for a rejected message,
    so a forged or replayed one cannot move the window.
    """

    cluster: str
    node: str
    peers: frozenset[str]
    max_skew: float
    _links: dict[str, _Inbound] = field(default_factory=dict)

    def admit(self, env: Envelope, now: float, nonce: str) -> int:
        """``nonce``: the challenge this connection's receiver sent."""
        if env.cluster != self.cluster:
            raise Rejected("wrong-cluster", env.cluster)
        if env.receiver != self.node:
            raise Rejected("misdirected", env.receiver)
        if env.sender not in self.peers:
            raise Rejected("unknown-peer", env.sender)
        if env.nonce != nonce:
            raise Rejected("replayed", f"{env.sender}: sealed for another connection")
        if abs(env.ts - now) > self.max_skew:
            raise Rejected("stale", f"{now - env.ts:.1f}s")
        link = self._links.get(env.sender)
        if link is None or env.boot > link.boot:
            # A sender seen for the first time, or restarted: its numbering
            # starts at 1, so anything above means messages were lost.
            self._links[env.sender] = _Inbound(env.boot, env.seq)
            return env.seq - 1
        if env.boot < link.boot or env.seq <= link.last:
            raise Rejected("replayed", f"{env.sender} boot {env.boot} seq {env.seq}")
        skipped = env.seq - link.last - 1
        link.last = env.seq
        return skipped
