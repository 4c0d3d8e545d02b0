"""Where the secrets come from: a file or the environment, never the
configuration itself.  The admin secret may also be generated (only when
neither is given), written to the state directory with mode 0600 and logged
by path, never by value.  The cluster secret cannot: every node of a
cluster must hold the same one, so federation without it does not start."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from .contract import SECRET_ENV

CLUSTER_SECRET_ENV = "PRESENCE_CLUSTER_SECRET"
MIN_LENGTH = 16

log = logging.getLogger(__name__)


class SecretError(Exception):
    pass


def read_secret(path: Path | None, env_name: str, what: str) -> str | None:
    """The secret from ``path``, else from ``$env_name``; None if neither."""
    if path is not None:
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise SecretError(f"cannot read {what} file {path}: {e.strerror}") from e
        if len(value) < MIN_LENGTH:
            raise SecretError(f"{what} in {path} is shorter than {MIN_LENGTH} characters")
        return value
    env = os.environ.get(env_name, "").strip()
    if env:
        if len(env) < MIN_LENGTH:
            raise SecretError(f"{env_name} is shorter than {MIN_LENGTH} characters")
        return env
    return None


def cluster_secret(path: Path | None) -> str:
    value = read_secret(path, CLUSTER_SECRET_ENV, "cluster secret")
    if value is None:
        raise SecretError(f"federation needs the cluster secret: set federation.secret_file or {CLUSTER_SECRET_ENV}")
    return value


def load_secret(path: Path | None, state_dir: Path) -> str:
    value = read_secret(path, SECRET_ENV, "admin secret")
    if value is not None:
        return value
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / "admin-secret"
    if target.exists():
        value = target.read_text().strip()
        if len(value) >= 16:
            log.info("admin secret read from %s", target, extra={"path": str(target)})
            return value
    value = secrets.token_urlsafe(32)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies only to a file that did not exist
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    log.warning("no admin secret given; generated one in %s", target, extra={"path": str(target)})
    return value
