"""Feature key synchronisation (``as-feature-event``) on the service side.

A phone changes DND or a forwarding by putting a ``Set…`` body in a
SUBSCRIBE (initial or refresh) to its own AOR.  The change is stored as
that feature's publication through the PUBLISH steps (so it is clustered,
expires and is listed like any state), every phone of the AOR is
notified, and the PBX, which has to act on the setting (its own call
routing), hears of it through an optional webhook.

The feature publications live ``publication_expiry.max``; every SUBSCRIBE
of the package refreshes them, so they outlive a phone that keeps its
subscription, and the PBX can always set them again through the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from ..packages.features import FeatureState, read_feature
from ..sip.errors import RemoteSipError
from ..sip.headers import media_type
from ..sip.status import Status
from .publish import PublishAsk, publish

if TYPE_CHECKING:
    from ..config import Features
    from ..metrics import Counting
    from .context import Incoming, Service

log = logging.getLogger(__name__)

FEATURES = "as-feature-event"


async def feature_subscribe(svc: Service, inc: Incoming, presentity: str) -> Callable[[], Awaitable[None]] | None:
    """Apply the SUBSCRIBE's feature change, if it carries one, and refresh
    the stored features; the returned work (notifying the AOR's other
    phones) runs once the SUBSCRIBE is answered."""
    body = inc.request.body
    stored = await svc.storage.publications(presentity, FEATURES, inc.now)
    keep = svc.config.publication_expiry.max
    if not body:
        for pub in stored:  # a keep-alive for the device's settings
            await publish(svc, PublishAsk(presentity, FEATURES, pub.etag, keep, b"", "", inc.host, inc.now))
        return None
    package = svc.publishable(FEATURES)
    ctype = media_type(inc.request.headers.get("content-type"))
    package.check_publication(body, ctype)  # 415/400 before anything is stored
    state = read_feature(body)
    same = [pub for pub in stored if read_feature(pub.body).feature == state.feature]
    etag = same[-1].etag if same else None
    reply = await publish(svc, PublishAsk(presentity, FEATURES, etag, keep, body, ctype, inc.host, inc.now))
    if svc.feature_hook is not None:
        svc.feature_hook.changed(presentity, state)
    return reply.then


def check_own(watcher: str, presentity: str) -> None:
    """A device's features are its own: anyone else could forward its calls."""
    if watcher != presentity:
        raise RemoteSipError("feature keys are only for their own AOR", status=Status.FORBIDDEN)


class FeatureHook:
    """POSTs each change a phone makes to the PBX (``features.webhook_url``).

    Fire and forget, at most ``webhook_max_in_flight`` at once (a change
    beyond that is dropped and counted: a slow PBX must not make the node
    hold memory for every key press), each within ``webhook_timeout``.
    """

    def __init__(self, settings: Features, metrics: Counting) -> None:
        assert settings.webhook_url is not None
        self.url = settings.webhook_url
        self.timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout)
        self.max_in_flight = settings.webhook_max_in_flight
        self.headers = {}
        if settings.webhook_secret_file is not None:
            secret = Path(settings.webhook_secret_file).read_text().strip()
            self.headers["Authorization"] = f"Bearer {secret}"
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def changed(self, presentity: str, state: FeatureState) -> None:
        if len(self._tasks) >= self.max_in_flight:
            self.metrics.count("feature_webhook_calls", "dropped")
            return
        payload = {"aor": presentity, "device": state.device, "feature": state.feature, "on": state.on,
                   "forward_to": state.forward_to, "ring_count": state.ring_count}
        task = asyncio.get_running_loop().create_task(self._post(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, payload: dict[str, object]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, json=payload, headers=self.headers) as resp:
                ok = resp.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            log.warning("feature webhook failed", extra={"url": self.url, "error": repr(e)})
            ok = False
        self.metrics.count("feature_webhook_calls", "ok" if ok else "error")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
