"""A private podman for local mode and the image tests: its own storage,
configuration and runtime settings, so nothing of the machine's default
podman state is used or changed.

Each setting below is what a sandboxed Debian machine (root without
CAP_SYS_RESOURCE, cgroups in hybrid mode, no systemd as PID 1, no image
registry) needs for podman to build and run at all:

- ``runc``: crun 1.8 (bookworm) refuses cgroup hybrid mode ("cgroups in
  hybrid mode not supported").
- ``default_ulimits`` at the caller's own hard limits: podman's root default
  (nofile=1048576) cannot be set without CAP_SYS_RESOURCE ("setrlimit
  RLIMIT_NOFILE: Operation not permitted"), and podman lowers its own nproc
  hard limit to 32768 before starting the runtime.
- ``cgroupfs`` and a file events logger: there is no systemd.
- host network: no CNI bridge or iptables changes on a shared machine; the
  containers listen on loopback addresses like the node processes do.
- the base image is made from Debian's packages with ``mmdebstrap`` (no
  registry to pull ``python:*-slim`` from), trusting the machine's extra CA
  certificates so that pip inside the build reaches PyPI through a
  TLS-inspecting proxy.
- ``--format docker``: the OCI format drops HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: The base the Dockerfiles build FROM here (their ``PYTHON_IMAGE`` build
#: argument): Debian bookworm's python3 (3.11), venv and CA certificates.
BASE_IMAGE = "localhost/debian-python:3.11-bookworm"
#: The version tag of both images: the chart's appVersion.
VERSION = "0.1.0"
NODE_IMAGE = f"localhost/presence-node:{VERSION}"
OPERATOR_IMAGE = f"localhost/presence-operator:{VERSION}"
#: Where images and podman's state live unless told otherwise: a cache kept
#: across test runs, so the base image (about 30 s to make) is made once.
DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "presence-images"
PACKAGES = ("podman", "runc", "mmdebstrap")


class PodmanError(Exception):
    """Podman is missing or a podman command failed; the message says which."""


def missing_tools() -> list[str]:
    return [p for p in PACKAGES if shutil.which(p) is None]


def _hard_limit(which: int, cap: int) -> int:
    hard = resource.getrlimit(which)[1]
    return cap if hard == resource.RLIM_INFINITY or hard > cap else hard


@dataclass
class Podman:
    """podman with a private root, run root, tmp dir and containers.conf."""

    home: Path = DEFAULT_DIR
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = missing_tools()
        if missing:
            raise PodmanError(f"containers need the Debian packages {', '.join(missing)} "
                              f"(scripts/setup.sh --containers installs them)")
        self.home.mkdir(parents=True, exist_ok=True)
        nofile = _hard_limit(resource.RLIMIT_NOFILE, 1_048_576)
        nproc = _hard_limit(resource.RLIMIT_NPROC, 32_768)
        self.conf = self.home / "containers.conf"
        self.conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            'netns = "host"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )

    @property
    def argv(self) -> list[str]:
        h = self.home
        return ["podman", "--root", str(h / "storage"), "--runroot", str(h / "run"), "--tmpdir", str(h / "tmp"),
                "--storage-driver", "overlay"]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 600, quiet: bool = False) -> str:
        """One podman command; its stdout.  A failure raises with its stderr."""
        res = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise PodmanError(f"podman {' '.join(args[:3])} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
        return res.stdout

    def output(self, *args: str) -> str:
        """stdout and stderr of a podman command, whatever its status
        (``logs`` writes a container's stderr to its own stderr)."""
        res = subprocess.run([*self.argv, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=60)
        return res.stdout

    def exists(self, image: str) -> bool:
        return subprocess.run([*self.argv, "image", "exists", image], env=self.env).returncode == 0

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        fn()
        self.timings[name] = time.monotonic() - t0
        self.log(f"{name}: {self.timings[name]:.1f} s")

    # -- images ---------------------------------------------------------------

    def ensure_base(self) -> None:
        """Make :data:`BASE_IMAGE` from Debian packages unless it exists."""
        if self.exists(BASE_IMAGE):
            return
        self._timed("base image (mmdebstrap + import)", self._make_base)

    def _make_base(self) -> None:
        tar = self.home / "rootfs.tar"
        copy_cas = ('for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && '
                    'cp "$c" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null')
        cmd = ["mmdebstrap", "--quiet", "--variant=minbase",
               "--include=python3,python3-venv,python-is-python3,ca-certificates",
               "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
               "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/locale/*",
               f"--customize-hook={copy_cas}",
               '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
               "bookworm", str(tar)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise PodmanError(f"mmdebstrap failed: {res.stderr.strip()[-2000:]}")
        try:
            self.run("import", "-q", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', str(tar), BASE_IMAGE)
        finally:
            tar.unlink(missing_ok=True)

    def image_id(self, image: str) -> str | None:
        return self.run("image", "inspect", "--format", "{{.Id}}", image).strip() if self.exists(image) else None

    def build(self, context: Path, dockerfile: str, tag: str) -> None:
        """Build ``dockerfile`` of ``context`` (its .dockerignore applies).

        The layers of earlier builds are the cache (the dependencies' layer
        is reused while pyproject.toml and the constraints stay the same);
        only the image this build replaces is removed."""
        old = self.image_id(tag)
        self._timed(f"build {tag}", lambda: self.run(
            "build", "-q", "--pull=never", "--format", "docker", "--network", "host",
            "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-f", str(context / dockerfile), "-t", tag, str(context),
            timeout=1800))
        if old is not None and old != self.image_id(tag):
            self.run("rmi", old, check=False)
        # Also :latest, the PresenceCluster's default spec.image.
        self.run("tag", tag, f"{tag.rsplit(':', 1)[0]}:latest")

    def build_all(self, context: Path) -> None:
        self.ensure_base()
        self.build(context, "docker/node.Dockerfile", NODE_IMAGE)
        self.build(context, "docker/operator.Dockerfile", OPERATOR_IMAGE)
        # Each build leaves its untagged build stage (the next build's cache);
        # those of earlier days go, so repeated test runs do not fill the disk.
        self.run("image", "prune", "-f", "--filter", "until=24h")

    def size(self, image: str) -> int:
        """Uncompressed bytes of ``image``."""
        return int(json.loads(self.run("image", "inspect", image))[0]["Size"])

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.run("inspect", name))[0]
