"""Resource list documents (RFC 4662 §5): one NOTIFY for a whole list.

A list subscription's NOTIFY body is ``multipart/related`` whose root part
(the ``start``) is the RLMI document, ``application/rlmi+xml``, naming
each resource of the list with one ``<instance>`` whose ``cid`` points at
the part holding that resource's own document (PIDF, dialog-info), as
the package composes it for a single watcher.  ``version`` counts the
NOTIFYs of the subscription from 0 (§5.3); ``fullState`` says whether
every resource is in the message (the first NOTIFY and after a refresh)
or only the ones that changed.

Pure: documents in, bytes out.  Instance ids are stable for one
subscription and resource (derived from both), Content-IDs unique per
message (they carry the version).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..xmlsafe import escape_attr
from .base import Document

RLMI_NS = "urn:ietf:params:xml:ns:rlmi"
RLMI_TYPE = "application/rlmi+xml"
#: The option tag of RFC 4662 (Supported/Require).
EVENTLIST = "eventlist"
#: Content-ID domain: not a host anyone resolves.
_CID_HOST = "rls.invalid"


@dataclass(frozen=True, slots=True)
class Resource:
    """One member of a list with its current document."""

    uri: str  # sip:user@domain
    document: Document


class ListDocument(Document):
    """A list NOTIFY body for one subscription, rendered per version."""

    def __init__(self, uri: str, subscription: str, resources: Sequence[Resource], *, full: bool) -> None:
        self.uri = uri
        self.resources = tuple(resources)
        self.full = full
        self._token = hashlib.sha1(f"{subscription}\n{uri}".encode()).hexdigest()[:16]
        self._root_cid = f"rlmi.{self._token}@{_CID_HOST}"
        self._boundary = f"rls-{self._token}"
        super().__init__(
            b"",
            f'multipart/related;type="{RLMI_TYPE}";start="<{self._root_cid}>";boundary="{self._boundary}"',
        )

    def instance_id(self, resource_uri: str) -> str:
        """Stable for this subscription and resource (RFC 4662 §5.3: the
        same instance keeps its id across notifications)."""
        return hashlib.sha1(f"{self._token}\n{resource_uri}".encode()).hexdigest()[:12]

    def render(self, version: int) -> bytes:
        lines = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<list xmlns="{RLMI_NS}" uri="{escape_attr(self.uri)}" version="{version}" '
            f'fullState="{"true" if self.full else "false"}">',
        ]
        parts: list[bytes] = []
        for resource in self.resources:
            instance = self.instance_id(resource.uri)
            cid = f"{instance}.{version}@{_CID_HOST}"
            lines.append(f'  <resource uri="{escape_attr(resource.uri)}">')
            lines.append(f'    <instance id="{instance}" state="active" cid="{cid}"/>')
            lines.append("  </resource>")
            doc = resource.document
            parts.append(_part(cid, doc.content_type, doc.render(version)))
        lines.append("</list>")
        rlmi = _part(self._root_cid, f'{RLMI_TYPE};charset="UTF-8"', "\n".join(lines).encode() + b"\n")
        delimiter = f"--{self._boundary}\r\n".encode()
        out = [delimiter + rlmi]
        out += [delimiter + part for part in parts]
        out.append(f"--{self._boundary}--\r\n".encode())
        return b"".join(out)


def _part(cid: str, content_type: str, body: bytes) -> bytes:
    head = f"Content-Transfer-Encoding: binary\r\nContent-ID: <{cid}>\r\nContent-Type: {content_type}\r\n\r\n"
    return head.encode() + body + b"\r\n"
