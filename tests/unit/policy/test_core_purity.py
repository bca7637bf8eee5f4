"""Policy cores stay pure: no network, torch, asyncio or clock imports (ARCHITECTURE.md,
principle 1), so the services and the simulator can run the same code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3] / "kvfleet"
CORES = [
    p for p in ROOT.rglob("*.py")
    if "core" in p.relative_to(ROOT).parts[:-1] or p.relative_to(ROOT).parts[0] == "policies"
]
FORBIDDEN = {"grpc", "redis", "torch", "asyncio", "time", "datetime", "os", "random", "uvloop"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_there_are_policy_cores_to_check() -> None:
    assert len(CORES) >= 4


@pytest.mark.parametrize("path", CORES, ids=lambda p: str(p.relative_to(ROOT)))
def test_policy_core_imports_nothing_impure(path: Path) -> None:
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
