"""A small client of the admin API: the ``presence-node tags`` CLI uses it,
and so can an orchestrator (the operator, the local-mode supervisor)."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp

from . import contract


class AdminError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else str(body)
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class Probe(NamedTuple):
    ready: bool
    #: The node answers /readyz with reason storage-unavailable: the process
    #: runs, its storage does not answer (the shared database is down, or
    #: this node cannot reach it).
    storage_down: bool
    #: The admin API answered /tags: orders can reach the node.
    reachable: bool
    #: {tag: epoch} of the shareable tags active on this node.
    active: dict[str, int]


class AdminClient:
    def __init__(self, base_url: str, secret: str, *, timeout: float = 2.0) -> None:
        self.base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {secret}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "AdminClient":
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        assert self._session is not None, "use as an async context manager"
        async with self._session.request(method, self.base + path, json=json) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 300:
                raise AdminError(resp.status, body)
            return body

    async def tags(self) -> list[contract.Tag]:
        return (await self._call("GET", contract.TAGS))["items"]

    async def activate(self, tag: str, epoch: int | None = None) -> contract.Tag:
        return await self._call(
            "POST", contract.TAG_ACTIVATE.format(tag=tag), {"epoch": epoch} if epoch is not None else None
        )

    async def deactivate(self, tag: str) -> contract.Tag:
        return await self._call("POST", contract.TAG_DEACTIVATE.format(tag=tag))

    async def put_subscriber(self, aor: str, ha1_md5: str, ha1_sha256: str, realm: str | None = None) -> Any:
        path = contract.SUBSCRIBER.format(aor=quote(aor, safe="@")) + (f"?realm={quote(realm)}" if realm else "")
        return await self._call("PUT", path, {"ha1_md5": ha1_md5, "ha1_sha256": ha1_sha256})

    async def delete_subscriber(self, aor: str, realm: str | None = None) -> None:
        path = contract.SUBSCRIBER.format(aor=quote(aor, safe="@")) + (f"?realm={quote(realm)}" if realm else "")
        assert self._session is not None, "use as an async context manager"
        async with self._session.delete(self.base + path) as resp:
            if resp.status >= 300:
                raise AdminError(resp.status, await resp.json(content_type=None))

    async def subscribers(self, offset: int = 0, limit: int = contract.MAX_LIMIT) -> list[dict[str, Any]]:
        return (await self._call("GET", f"{contract.SUBSCRIBERS}?offset={offset}&limit={limit}"))["items"]

    async def probe(self) -> Probe:
        """What an orchestrator's health check needs, in one go (see
        :class:`Probe`).  Never raises for a node that is down or answers
        garbage."""
        ready_t = asyncio.ensure_future(self.readiness())
        try:
            items = await self.tags()
        except (AdminError, aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return Probe(*await ready_t, False, {})
        active = {t["tag"]: int(t["epoch"]) for t in items if t["state"] == "active" and not t["private"]}
        return Probe(*await ready_t, True, active)

    async def readiness(self) -> tuple[bool, bool]:
        """(ready, alive with its storage unavailable) from ``/readyz``."""
        assert self._session is not None
        try:
            async with self._session.get(self.base + contract.READYZ) as resp:
                if resp.status == 200:
                    return True, False
                body = await resp.json(content_type=None)
                return False, isinstance(body, dict) and body.get("reason") == contract.STORAGE_UNAVAILABLE
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False, False
