"""The type checker runs with the suite: mypy, strict, on the files
``[tool.mypy]`` in pyproject.toml names (the sans-I/O SIP core and the
operator's planner).  A subprocess, since mypy keeps module state; its
cache (``.mypy_cache``, ignored by git) makes a second run take a fraction
of the first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mypy_cache"


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_strict_files_type_check():
    result = mypy(cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found in" in result.stdout


def test_the_configuration_is_strict(tmp_path: Path):
    """The project's configuration rejects what only strict mode rejects (an
    unannotated function), so a passing check above means strict."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "loose.py").write_text("def f(x):\n    return x\n")
    result = mypy("loose.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "[no-untyped-def]" in result.stdout
