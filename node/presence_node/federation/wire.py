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

Sequence numbers run per link (sender, receiver), over every message, so a
receiver that sees one skipped knows it lost something (a message sent while
the link was down) and asks the sender for a resync: delivery is not
best-effort.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any

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
