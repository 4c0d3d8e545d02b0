"""The pure layers stay pure: the SIP core, the event packages, the XML
guard and the cluster channel's wire format import no event loop, socket,
HTTP or database module, and the operator's decision core (spec, planner,
health, status) not even the clock, the OS or the node it drives."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "node" / "presence_node"
PURE = [
    *sorted((ROOT / "sip").glob("*.py")),
    *sorted((ROOT / "packages").glob("*.py")),
    ROOT / "xmlsafe.py",
    ROOT / "federation" / "wire.py",
]
FORBIDDEN = {"asyncio", "socket", "selectors", "aiohttp", "psycopg", "psycopg_pool", "uvloop", "kopf", "kubernetes"}
OPERATOR = ROOT.parents[1] / "operator" / "presence_operator"
DECISIONS = [*(OPERATOR / f for f in ("spec.py", "planner.py", "health.py", "status.py")),
             *sorted((OPERATOR / "builders").glob("*.py"))]
DECISIONS_FORBIDDEN = FORBIDDEN | {"subprocess", "os", "time", "presence_node"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_does_no_io(path: Path):
    assert not imported_modules(path) & FORBIDDEN


@pytest.mark.parametrize("path", DECISIONS, ids=lambda p: p.name)
def test_operator_decision_module_does_no_io(path: Path):
    names = imported_modules(path)
    assert names, "the AST walk found no imports at all: the test would be vacuous"
    assert not names & DECISIONS_FORBIDDEN


def test_installed_packages_hold_no_test_support():
    """The test extra (KMock, jsonpatch, pytest) is not installed in the
    images: no module of the node or the operator may import it (the
    Kubernetes emulator lives in tests/kube_emulator.py)."""
    modules = [*sorted(ROOT.rglob("*.py")), *sorted(OPERATOR.rglob("*.py"))]
    assert len(modules) > 50
    for path in modules:
        assert not imported_modules(path) & {"kmock", "jsonpatch", "pytest"}, path
