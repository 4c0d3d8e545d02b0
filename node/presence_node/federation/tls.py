"""TLS for the cluster channel: the MACs prove who sent a message, TLS
keeps it from being read on the way.

Every node has a certificate and key, and the CA file that every peer's
certificate must chain to: a listener requires and verifies the client's
certificate (mutual TLS), and a client verifies the listener's against the
peer's address.  The files are read again when they change (a rotated
Kubernetes Secret), at the next connection; links already open keep their
session.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from ..admin.secret import SecretError

log = logging.getLogger(__name__)


class TlsFiles:
    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.cert, self.key, self.ca = cert, key, ca
        self._stamp: tuple[int, ...] | None = None
        self._server: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        try:
            self.load()  # a bad file stops start-up, not the first connection
        except (OSError, ssl.SSLError) as e:
            raise SecretError(f"federation TLS files ({cert}, {key}, {ca}) cannot be used: {e}") from e

    def load(self) -> None:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_cert_chain(self.cert, self.key)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        client.load_cert_chain(self.cert, self.key)
        self._server, self._client, self._stamp = server, client, self._mtimes()

    def server(self) -> ssl.SSLContext:
        self._reload()
        assert self._server is not None
        return self._server

    def client(self) -> ssl.SSLContext:
        self._reload()
        assert self._client is not None
        return self._client

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(os.stat(p).st_mtime_ns for p in (self.cert, self.key, self.ca))

    def _reload(self) -> None:
        """Read the files again if they changed; on an error (a half-written
        rotation) keep the contexts we have until they change again."""
        try:
            stamp = self._mtimes()
            if stamp != self._stamp:
                self._stamp = stamp
                self.load()
                log.info("cluster channel TLS files reloaded")
        except (OSError, ssl.SSLError) as e:
            log.error("cluster channel TLS files not reloaded", extra={"reason": str(e)})
