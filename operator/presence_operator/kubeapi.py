"""The operator's only door to the Kubernetes API: create, fetch, merge-patch
and list plain dicts over the ``kubernetes`` client's connection (kubeconfig
or in-cluster), each call run in a worker thread so the event loop never
blocks.  No typed models: the builders' dicts go out as they are."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes

from . import spec as specs

#: kind -> (API prefix, plural) for the kinds the operator touches.
KINDS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    specs.KIND: (f"/apis/{specs.API_VERSION}", "presenceclusters"),
}


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body.get('message') if isinstance(body, dict) else body}")
        self.status = status
        self.body = body


def load_config() -> None:
    """Kubeconfig when there is one (``$KUBECONFIG``, ``~/.kube/config``), else in-cluster."""
    try:
        kubernetes.config.load_kube_config()
    except (kubernetes.config.ConfigException, FileNotFoundError, TypeError):
        kubernetes.config.load_incluster_config()


def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    p = f"{prefix}/namespaces/{namespace}/{plural}"
    if name is not None:
        p += f"/{name}"
    if sub is not None:
        p += f"/{sub}"
    return p


class Api:
    def __init__(self, client: kubernetes.client.ApiClient | None = None) -> None:
        self.client = client or kubernetes.client.ApiClient()

    def _call(self, method: str, p: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, hdrs, data, post = self.client.param_serialize(
            method, p, query_params=[], header_params=headers, body=body, auth_settings=["BearerToken"])
        resp = self.client.call_api(m, url, hdrs, data, post, _request_timeout=5)
        raw = resp.read()
        try:
            out = json.loads(raw) if raw else None
        except ValueError:
            out = raw.decode(errors="replace")
        if resp.status >= 300:
            raise ApiError(resp.status, out)
        return out

    async def get(self, p: str) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(self._call, "GET", p)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, p: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, "POST", p, body)

    async def patch(self, p: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, "PATCH", p, body, content_type="application/merge-patch+json")

    async def apply(self, obj: dict[str, Any]) -> str:
        """Create the object, or merge-patch it to the rendered form: ``created``, ``patched``."""
        md = obj["metadata"]
        try:
            await self.create(path(obj["kind"], md["namespace"]), obj)
            return "created"
        except ApiError as e:
            if e.status != 409:
                raise
        await self.patch(path(obj["kind"], md["namespace"], md["name"]), obj)
        return "patched"
