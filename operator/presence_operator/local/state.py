"""The state directory of a local cluster, and the status table.

``run.json`` says what ``up`` started (pids, ports, databases) and is what
``down`` stops; ``status.json`` is the supervisor's status (the CR's
``.status``, same layout: ``status.py``; it includes the failover intent, so
a restarted supervisor rolls a failover forward).  Both are replaced atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..status import from_iso

DEFAULT_DIR = Path(".presence-cluster")


def run_file(d: Path) -> Path:
    return d / "run.json"


def status_file(d: Path) -> Path:
    return d / "status.json"


def ops_file(d: Path) -> Path:
    """Manual operations (``presence-cluster fence``/``switchover``), the
    local form of the CR's annotations: ``{"fenced": [node, ...],
    "switchovers": {tag: node}}``, read by the supervisor at every probe."""
    return d / "operations.json"


def secret_file(d: Path) -> Path:
    return d / "admin-secret"


def cluster_secret_file(d: Path) -> Path:
    """The federation modes' cluster secret (HMAC key of the cluster channel)."""
    return d / "cluster-secret"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def table(run: dict[str, Any], status: dict[str, Any] | None, now: float | None = None) -> str:
    """The columns of ``kubectl get presenceclusters -o wide``: name, mode,
    ready x/y, tag owners, last failover, age, then phase and failovers."""
    now = time.time() if now is None else now
    st = status or {}
    total = len(run["nodes"])
    ready = st.get("readyNodes", 0)
    owners = ",".join(f"{t}={v.get('owner') or '-'}" for t, v in sorted(st.get("tags", {}).items())) or "<none>"
    lf = st.get("lastFailover")
    last = "<none>"
    if lf:
        ago = _age(now - from_iso(lf["time"]))
        last = f"{lf['from']}->{lf['to']} {','.join(lf['tags'])} {lf['seconds']:.2f}s {ago} ago"
    rows = [
        ["NAME", "MODE", "READY", "TAGS", "LAST FAILOVER", "AGE", "PHASE", "FAILOVERS"],
        [run["name"], run["mode"], f"{ready}/{total}", owners, last, _age(now - run["created"]),
         st.get("phase", "Unknown"), str(st.get("failoverCount", 0))],
    ]
    out = _columns(rows)
    nodes = [["NODE", "LOCATION", "READY", "PID", "SIP", "ADMIN", "ACTIVE TAGS"]]
    for name, n in run["nodes"].items():
        ns = st.get("nodes", {}).get(name, {})
        nodes.append([name, n["location"], "true" if ns.get("ready") else "false", str(n["pid"]), n["sip"],
                      n["admin"], ",".join(ns.get("tags", [])) or "-"])
    out += "\n\n" + _columns(nodes)
    manual = [f"fenced: {', '.join(st['fenced'])}"] if st.get("fenced") else []
    manual += [f"switchover: {t} -> {n}" for t, n in sorted((st.get("switchovers") or {}).items())]
    return out + ("\n\n" + "\n".join(manual) if manual else "")


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
