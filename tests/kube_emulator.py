"""KMock's Kubernetes emulator made close enough to an API server for kopf
and kubectl, for the project's tests and bench/failover_emulator.py (it needs
the ``test`` extra: ``kmock``, ``jsonpatch``; test support, so it lives with
the tests rather than in the installed operator package).  Each fix below answers a failure observed
with the stock emulator.

What this emulator does for k8s data requests (everything else, discovery
included, is KMock's):
- one write lock and a global resourceVersion counter; creates stamp uid,
  creationTimestamp, generation, resourceVersion, namespace, generateName;
  patches bump resourceVersion (and generation on spec changes);
- merge patch (dicts, ``None`` deletes) and RFC 6902 JSON patch, a failed
  ``test`` op answering 422 as an API server does;
- the status subresource: status dropped from creates and main-endpoint
  patches, only status kept from ``/status`` patches;
- finalizers and deletionTimestamp;
- list with ``kind: XList`` and a real resourceVersion; watch resumable from
  ``?resourceVersion=N`` (event log), with the snapshot and the log mark
  taken atomically, JSON content type;
- equality label selectors and metadata.name/namespace field selectors;
- ``register_crd()`` from a CRD document; namespaces at ``/api/v1/namespaces``;
- ``requests``: a count of the data requests per (action, plural), e.g.
  ``requests["LIST", "pods"]``, so a test can tell a watch from polling;
- ``meta.k8s.io/v1 Table`` answers (what ``kubectl get`` asks for with
  ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``) for list, get
  and watch of custom resources, built as the API server's CRD table
  convertor does from the CRD's ``additionalPrinterColumns``: a Name
  column, then each column's ``jsonPath`` evaluated by the small evaluator
  below (``.a.b``, ``['a']``, ``[n]``, ``[*]``, ``[?(@.a.b=="v")]``: what
  our CRD uses and a bit more; any other path is refused at registration),
  ``date`` cells as kubectl's relative age.  Built-in resources get no
  Table (kubectl then prints NAME and AGE only).
Not done (not needed here): SSA, strategic merge (applied as a plain merge),
PUT, garbage collection, controllers, kubelet.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import json
import re
import uuid
import warnings
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import enums, parsing, references

_parse_path = parsing.parse_path


def _patched_parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 5 and (len(parts) < 5 or parts[4] == "status"):
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath("", "v1", "namespaces", None, name, sub)
    return _parse_path(path)


parsing.parse_path = _patched_parse_path

_DATA_ACTIONS = {enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE, enums.action.LIST,
                 enums.action.WATCH, enums.action.FETCH}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _label_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_match(selector: str, obj: dict[str, Any]) -> bool:
    md = obj.get("metadata", {})
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
        cur = {"metadata.name": md.get("name"), "metadata.namespace": md.get("namespace")}.get(k.strip())
        if (cur == v.strip()) == neg:
            return False
    return True


# -- Tables (kubectl get): the CRD's printer columns ----------------------------

_STEP = re.compile(r"""\.([A-Za-z0-9_-]+)|\[(-?\d+)\]|\['([^']*)'\]|\[(\*)\]"""
                   r"""|\[\?\(@((?:\.[A-Za-z0-9_-]+)+)\s*==\s*(?:"([^"]*)"|'([^']*)')\)\]""")


def compile_jsonpath(path: str) -> list[tuple[str, Any]]:
    """A column's ``jsonPath`` as steps: ``field``, ``index``, ``all``,
    ``filter``.  Anything this evaluator cannot read raises ValueError."""
    p = path.strip()
    if p.startswith("{") and p.endswith("}"):
        p = p[1:-1]
    if p.startswith("$"):
        p = p[1:]
    steps: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(p):
        m = _STEP.match(p, pos)
        if m is None:
            raise ValueError(f"jsonPath {path!r}: cannot read {p[pos:]!r}")
        field, index, quoted, star, fpath, v1, v2 = m.groups()
        if field is not None or quoted is not None:
            steps.append(("field", field if field is not None else quoted))
        elif index is not None:
            steps.append(("index", int(index)))
        elif star is not None:
            steps.append(("all", None))
        else:
            steps.append(("filter", (fpath.lstrip(".").split("."), v1 if v1 is not None else v2)))
        pos = m.end()
    if not steps:
        raise ValueError(f"jsonPath {path!r} selects nothing")
    return steps


def eval_jsonpath(steps: list[tuple[str, Any]], obj: Any) -> list[Any]:
    """Every value the path reaches in ``obj`` (missing fields reach nothing)."""
    cur = [obj]
    for kind, arg in steps:
        nxt: list[Any] = []
        for v in cur:
            if kind == "field" and isinstance(v, dict) and arg in v:
                nxt.append(v[arg])
            elif kind == "index" and isinstance(v, list) and -len(v) <= arg < len(v):
                nxt.append(v[arg])
            elif kind == "all" and isinstance(v, (list, dict)):
                nxt.extend(v if isinstance(v, list) else v.values())
            elif kind == "filter" and isinstance(v, list):
                keys, want = arg
                for item in v:
                    got = item
                    for k in keys:
                        got = got.get(k) if isinstance(got, dict) else None
                    if isinstance(got, (str, int, float, bool)) and _text(got) == want:
                        nxt.append(item)
        cur = nxt
    return cur


def _text(v: Any) -> str:
    """A value as kubectl's jsonpath prints it (scalars; JSON for the rest)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v, separators=(",", ":"))


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration (kubectl's AGE)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{hours // 24 // 365}y"


def _cell(col_type: str, values: list[Any]) -> Any:
    """One cell as the API server's CRD table convertor makes it: the first
    value; strings printed, integer/number/boolean typed, date as an age;
    nothing found (or a value of the wrong type) is null (kubectl: <none>)."""
    if not values or values[0] is None:
        return None
    v = values[0]
    if col_type == "string":
        return _text(v)
    if col_type == "integer" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v)
    if col_type == "number" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if col_type == "boolean" and isinstance(v, bool):
        return v
    if col_type == "date" and isinstance(v, str):
        try:
            t = datetime.datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return "<invalid>"
        return human_duration((datetime.datetime.now(datetime.UTC) - t).total_seconds())
    return None


def wants_table(headers: Any) -> str | None:
    """The Table version asked for in Accept (``v1`` or ``v1beta1``), if any."""
    accept = next((v for k, v in dict(headers).items() if k.lower() == "accept"), "") or ""
    for media in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in media.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
    return None


class ApiEmulator(kmock.KubernetesEmulator):
    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = 0
        self._wlock = asyncio.Lock()
        self._log: list[tuple[int, references.resource, dict[str, Any]]] = []
        self._changed = asyncio.Condition()
        self._status_resources: set[references.resource] = set()
        self._namespaced: dict[references.resource, bool] = {}
        #: Per custom resource: the Table's column definitions and their compiled jsonPaths.
        self._columns: dict[references.resource, list[tuple[dict[str, Any], list[tuple[str, Any]]]]] = {}
        #: (action, plural) -> data requests received, e.g. ``requests["LIST", "pods"]``.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- setup --

    def prepare(self, namespace: str, crd: dict[str, Any] | None = None) -> None:
        """KMock's bundled built-in resources, ``crd`` when given (else
        whoever applies the CRD registers it), and ``namespace``."""
        with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        if crd is not None:
            self.register_crd(crd)
        self.put("v1/namespaces", None, {"metadata": {"name": namespace}})

    def register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for v in spec["versions"]:
            if not v.get("served", True):
                continue
            res = references.resource(spec["group"], v["name"], names["plural"])
            subs = set((v.get("subresources") or {}).keys())
            self.resources[res] = references.ResourceInfo(
                kind=names["kind"], singular=names.get("singular"), shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                namespaced=spec.get("scope", "Namespaced") == "Namespaced", subresources=subs)
            if "status" in subs:
                self._status_resources.add(res)
            cols = v.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns") or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
            self._columns[res] = [
                ({"name": "Name", "type": "string", "format": "name", "priority": 0,
                  "description": "Name must be unique within a namespace."}, [("field", "metadata"), ("field", "name")]),
                *(({"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                    "description": c.get("description", ""), "priority": int(c.get("priority", 0))},
                   compile_jsonpath(c["jsonPath"])) for c in cols)]

    def table(self, res, objs: list[dict[str, Any]], version: str = "v1", include: str = "Metadata",
              headers: bool = True) -> dict[str, Any]:
        """A ``meta.k8s.io`` Table of ``objs`` with the resource's printer columns."""
        cols = self._columns[res]
        rows = []
        for o in objs:
            if include == "Object":
                embedded: dict[str, Any] | None = o
            elif include == "None":
                embedded = None
            else:
                embedded = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
                            "metadata": o.get("metadata", {})}
            rows.append({"cells": [_cell(d["type"], eval_jsonpath(steps, o)) for d, steps in cols],
                         "object": embedded})
        return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}",
                "metadata": {"resourceVersion": str(self._rv)},
                "columnDefinitions": [d for d, _ in cols] if headers else [], "rows": rows}

    def _table_of(self, request) -> str | None:
        """The Table version to answer ``request`` with, or None (not asked,
        or not a custom resource)."""
        if request.resource not in self._columns:
            return None
        raw = request._raw_request
        return wants_table(raw.headers if raw is not None else request.headers)

    def live(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        res = references.resource(resource)
        for (r, ns, n), obj in self.objects.items():
            if r == res and ns == namespace and n == name:
                return None if obj.deleted else copy.deepcopy(obj.raw)
        return None

    def put(self, resource: str, namespace: str | None, body: dict[str, Any]) -> None:
        """Pre-populate (no watch event)."""
        self._rv += 1
        md = body.setdefault("metadata", {})
        md.setdefault("uid", str(uuid.uuid4()))
        md["resourceVersion"] = str(self._rv)
        md.setdefault("creationTimestamp", _now())
        if namespace is not None:
            md["namespace"] = namespace
        self.objects[resource, namespace, md["name"]] = body

    # -- discovery fix: the core group is "v1", not "/v1" --

    async def _serve_version(self, request):  # type: ignore[override]
        out = await super()._serve_version(request)
        if request.resource is not None and request.resource.group == "":
            out["groupVersion"] = request.resource.version
        for r in out.get("resources", []):
            if "/" in r["name"]:
                r["shortNames"] = []
            info = None
            res = references.resource(request.resource.group, request.resource.version, r["name"].split("/")[0])
            if res in self.resources:
                info = self.resources[res]
            if info is not None and info.namespaced is not None:
                r["namespaced"] = info.namespaced
        return out

    # -- data requests --

    async def _handle(self, request):  # type: ignore[override]
        res = request.resource
        if res is None or res.plural is None or request.action not in _DATA_ACTIONS:
            return await super()._handle(request)
        known = [r for r in self._get_resources() if r == res]
        if not known:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"unknown resource {res}")
        self.requests[request.action.value, res.plural] += 1
        if request.action is enums.action.WATCH:
            return await self._watch(request)
        as_table = self._table_of(request)
        include = request.params.get("includeObject", "Metadata")
        if request.action is enums.action.LIST:
            listed = self._list(request)
            if as_table:
                return aiohttp.web.json_response(self.table(res, listed["items"], as_table, include))
            return aiohttp.web.json_response(listed)
        async with self._wlock:
            if request.action is enums.action.FETCH:
                obj = self._get(res, request.namespace, request.name)
                if obj is None:
                    raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
                if as_table:
                    return aiohttp.web.json_response(self.table(res, [obj], as_table, include))
                return aiohttp.web.json_response(obj)
            if request.action is enums.action.CREATE:
                return aiohttp.web.json_response(await self._create(request), status=201)
            if request.action is enums.action.UPDATE:
                return aiohttp.web.json_response(await self._patch(request))
            return aiohttp.web.json_response(await self._delete(request))

    def _key(self, res, namespace, name):
        for key, obj in self.objects.items():
            if key[0] == res and key[1] == namespace and key[2] == name:
                return key, obj
        return None, None

    def _get(self, res, namespace, name) -> dict[str, Any] | None:
        _, obj = self._key(res, namespace, name)
        return None if obj is None or obj.deleted else copy.deepcopy(obj.raw)

    async def _emit(self, res, kind: str, obj: dict[str, Any]) -> None:
        self._log.append((int(obj["metadata"]["resourceVersion"]), res, {"type": kind, "object": copy.deepcopy(obj)}))
        async with self._changed:
            self._changed.notify_all()

    def _bump(self, obj: dict[str, Any]) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)

    def _is_namespaced(self, res) -> bool:
        try:
            ns = self.resources[res].namespaced
        except KeyError:
            ns = None
        return ns is not False

    async def _create(self, request) -> dict[str, Any]:
        res = request.resource
        body = copy.deepcopy(request.data or {})
        md = body.setdefault("metadata", {})
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
        ns = (request.namespace or md.get("namespace")) if self._is_namespaced(res) else None
        if ns is not None:
            md["namespace"] = ns
        if self._get(res, ns, md["name"]) is not None:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists", message=f"{md['name']} already exists")
        if res in self._status_resources:
            body.pop("status", None)
        md.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._bump(body)
        key, obj = self._key(res, ns, md["name"])
        if obj is None:
            self.objects[res, ns, md["name"]] = body
        else:
            obj.create(body)
        if res.group == "apiextensions.k8s.io" and res.plural == "customresourcedefinitions":
            self.register_crd(body)
        await self._emit(res, "ADDED", body)
        return body

    async def _patch(self, request) -> dict[str, Any]:
        res, ns = request.resource, request.namespace if self._is_namespaced(request.resource) else None
        key, obj = self._key(res, ns, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
        old = copy.deepcopy(obj.raw)
        patch = request.data
        if isinstance(patch, list):
            try:
                new = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as e:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(e))
        else:
            new = _merge(old, patch or {})
        if res in self._status_resources:
            if request.subresource == "status":
                new = {**old, "status": new.get("status"), "metadata": new.get("metadata", old["metadata"])}
                if new["status"] is None:
                    new.pop("status")
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            if fixed in old["metadata"]:
                new["metadata"][fixed] = old["metadata"][fixed]
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._bump(new)
        md = new["metadata"]
        if md.get("deletionTimestamp") and not md.get("finalizers"):
            obj.create(new)
            obj.delete()
            await self._emit(res, "DELETED", new)
        else:
            obj.create(new)
            await self._emit(res, "MODIFIED", new)
        return new

    async def _delete(self, request) -> dict[str, Any]:
        res, ns = request.resource, request.namespace if self._is_namespaced(request.resource) else None
        key, obj = self._key(res, ns, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message=f"{request.name} not found")
        cur = copy.deepcopy(obj.raw)
        md = cur["metadata"]
        if md.get("finalizers"):
            if not md.get("deletionTimestamp"):
                md["deletionTimestamp"] = _now()
                self._bump(cur)
                obj.create(cur)
                await self._emit(res, "MODIFIED", cur)
            return cur
        self._bump(cur)
        obj.delete()
        await self._emit(res, "DELETED", cur)
        return cur

    def _selected(self, request, obj: dict[str, Any]) -> bool:
        md = obj.get("metadata", {})
        if request.namespace is not None and md.get("namespace") != request.namespace:
            return False
        if request.name is not None and md.get("name") != request.name:
            return False
        ls, fs = request.params.get("labelSelector"), request.params.get("fieldSelector")
        if ls and not _label_match(ls, md.get("labels") or {}):
            return False
        return not (fs and not _field_match(fs, obj))

    def _snapshot(self, request) -> list[dict[str, Any]]:
        return [copy.deepcopy(obj.raw) for (r, _, _), obj in self.objects.items()
                if r == request.resource and not obj.deleted and self._selected(request, obj.raw)]

    def _list(self, request) -> dict[str, Any]:
        kind = None
        try:
            kind = self.resources[request.resource].kind
        except KeyError:
            pass
        res = request.resource
        return {"apiVersion": f"{res.group}/{res.version}" if res.group else res.version,
                "kind": f"{kind or 'Object'}List", "metadata": {"resourceVersion": str(self._rv)},
                "items": self._snapshot(request)}

    async def _watch(self, request) -> aiohttp.web.StreamResponse:
        since = request.params.get("resourceVersion", "")
        if since.isdigit() and int(since) > 0:
            mark, initial = int(since), []
        else:
            mark, initial = self._rv, [{"type": "ADDED", "object": o} for o in self._snapshot(request)]
            if since.isdigit():  # "0": snapshot, then the log from now
                pass
        mark_pos = len(self._log) if not (since.isdigit() and int(since) > 0) else 0
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request._raw_request)
        as_table, include = self._table_of(request), request.params.get("includeObject", "Metadata")
        sent = 0

        def encode(ev: dict[str, Any]) -> bytes:
            # As a table watch: each event's object a one-row Table, the
            # column definitions in the first one only.
            nonlocal sent
            if as_table and ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                ev = {**ev, "object": self.table(request.resource, [ev["object"]], as_table, include, sent == 0)}
                sent += 1
            return json.dumps(ev).encode() + b"\n"

        for ev in initial:
            await resp.write(encode(ev))
        if request.params.get("sendInitialEvents") == "true":
            bm = {"type": "BOOKMARK", "object": {"kind": "Bookmark", "metadata": {
                "resourceVersion": str(self._rv), "annotations": {"k8s.io/initial-events-end": "true"}}}}
            await resp.write(json.dumps(bm).encode() + b"\n")
        pos = mark_pos
        try:
            while True:
                while pos < len(self._log):
                    rv, res, ev = self._log[pos]
                    pos += 1
                    if rv > mark and res == request.resource and self._selected(request, ev["object"]):
                        await resp.write(encode(ev))
                async with self._changed:
                    if pos >= len(self._log):
                        await self._changed.wait()
        except ConnectionResetError:
            pass
        return resp
