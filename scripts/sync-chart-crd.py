#!/usr/bin/env python3
"""Copy crds/presenceclusters.yaml (the one source of the CRD) into the Helm
chart's templates/crds/, adding the `keep` policy and the chart labels.
Run after changing the CRD; tests/test_chart.py fails while they differ."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "crds" / "presenceclusters.yaml"
DST = ROOT / "charts" / "sip-presence-operator" / "templates" / "crds" / "presenceclusters.yaml"
NAME = "metadata:\n  name: presenceclusters.presence.example.org\n"

HEADER = """{{- if .Values.crds.create }}
# A copy of crds/presenceclusters.yaml (the one source; tests/test_chart.py
# asserts they are equal), templated so that `helm upgrade` upgrades it and
# `helm uninstall` keeps it (with it, every PresenceCluster). Regenerate:
#   python scripts/sync-chart-crd.py
"""
META = NAME + """  annotations:
    helm.sh/resource-policy: keep
  labels:
    {{- include "sip-presence-operator.labels" . | nindent 4 }}
"""


def render() -> str:
    src = SRC.read_text()
    body = src[src.index("apiVersion:"):]
    if "{{" in body:
        raise SystemExit("the CRD contains '{{': it would be read as a template")
    head, rest = body.split(NAME, 1)
    return HEADER + head + META + rest.rstrip("\n") + "\n{{- end }}\n"


if __name__ == "__main__":
    DST.write_text(render())
    print(f"wrote {DST.relative_to(ROOT)}")
