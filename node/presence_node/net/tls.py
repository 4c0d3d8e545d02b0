"""The SIP listeners' TLS certificate (sips: over TLS, and WSS).

The certificate chain and key come from two PEM files, typically a
Kubernetes Secret that cert-manager renews in place.  Each new connection
asks for :meth:`ServerCertificate.context`, which reads the files again
when their modification time, inode or size changed (two ``stat`` calls
per accept, no timer): a renewed certificate serves the next connection,
and connections already open keep their session.  A pair that cannot be
used (a rotation half written: the new certificate beside the old key)
leaves the last good context in place until the files change again.
Clients are not asked for a certificate: TLS here protects the watcher's
traffic, who the watcher is stays SIP's business (digest, trusted proxies).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from ..admin.secret import SecretError
from ..metrics import Counting

log = logging.getLogger(__name__)


class TlsConfigError(SecretError):
    """The certificate or key cannot be used (start-up stops)."""


class ServerCertificate:
    def __init__(self, cert: Path, key: Path, metrics: Counting | None = None) -> None:
        self.cert, self.key = cert, key
        self.metrics = metrics
        try:
            self._stamp = self._stamps()
            self._context = self._load()
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"SIP TLS certificate {cert} and key {key} cannot be used: {e}") from e

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def _stamps(self) -> tuple[int, ...]:
        stamp: tuple[int, ...] = ()
        for p in (self.cert, self.key):
            st = os.stat(p)
            stamp += (st.st_mtime_ns, st.st_ino, st.st_size)
        return stamp

    def context(self) -> ssl.SSLContext:
        """The context for a new connection, re-read first if the files changed."""
        try:
            stamp = self._stamps()
        except OSError as e:
            log.error("SIP TLS files not readable; keeping the loaded certificate", extra={"reason": str(e)})
            return self._context
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._context = self._load()
            except (OSError, ssl.SSLError) as e:
                self._count("failed")
                log.error("SIP TLS files not reloaded; keeping the loaded certificate", extra={"reason": str(e)})
            else:
                self._count("ok")
                log.info("SIP TLS certificate reloaded", extra={"cert": str(self.cert)})
        return self._context

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.count("sip_tls_reloads", result)
