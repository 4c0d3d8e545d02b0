"""Where the admin secret comes from: a file, the environment, or (only when
neither is given) a generated one written to the state directory with mode
0600 and logged by path, never by value."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from .contract import SECRET_ENV

log = logging.getLogger(__name__)


class SecretError(Exception):
    pass


def load_secret(path: Path | None, state_dir: Path) -> str:
    if path is not None:
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise SecretError(f"cannot read admin secret file {path}: {e.strerror}") from e
        if len(value) < 16:
            raise SecretError(f"admin secret in {path} is shorter than 16 characters")
        return value
    env = os.environ.get(SECRET_ENV, "").strip()
    if env:
        if len(env) < 16:
            raise SecretError(f"{SECRET_ENV} is shorter than 16 characters")
        return env
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
