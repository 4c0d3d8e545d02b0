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

import asyncio
import logging
import os
import ssl
from asyncio import sslproto
from pathlib import Path
from typing import Callable

from ..admin.secret import SecretError
from ..metrics import Counting

log = logging.getLogger(__name__)


def accept_tls(
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    ctx: ssl.SSLContext,
    timeout: float,
    done: Callable[[asyncio.Future[None]], None],
) -> None:
    """Put TLS under ``protocol`` at once, from its ``connection_made``, as
    loop.start_tls does but not from a task: uvloop starts reading as soon
    as connection_made returns (pause_reading there does not hold), and a
    ClientHello read before a task ran would reach ``protocol`` rather than
    TLS, and the handshake would hang.  ``protocol.connection_made`` is
    called again with the TLS transport once the handshake is done; ``done``
    gets the handshake's future when it ends, failed or not (on a failure,
    or the peer gone before the end, ``connection_lost`` does not reach
    ``protocol``: ``done`` must let the connection go)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    waiter.add_done_callback(done)
    tls = sslproto.SSLProtocol(loop, protocol, ctx, waiter, server_side=True, ssl_handshake_timeout=timeout)  # type: ignore[arg-type]
    transport.set_protocol(tls)
    tls.connection_made(transport)


class Forwarding(asyncio.Protocol):
    """A connection that, once its HTTP handler (aiohttp's, for WebSocket)
    is set as ``inner``, hands it the stream's end and the transport's flow
    control: the SIP WebSocket listener and the cluster channel's gate."""

    inner: asyncio.Protocol | None = None

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


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
