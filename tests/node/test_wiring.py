"""Imports follow ownership: the composition root and the simulator's engine are imported by
nothing they own, not even under TYPE_CHECKING (`lint-imports` checks the same as layers
contracts in pyproject.toml; this is the fast version every test run sees)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgesched

PACKAGE = Path(edgesched.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every edgesched module `path` imports, anywhere in the file (typing-only included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("edgesched.")}


def importers_of(target: str, files: list[Path]) -> list[str]:
    return sorted(f.name for f in files if target in imported_modules(f))


def test_no_node_component_imports_the_composition_root() -> None:
    node = sorted((PACKAGE / "node").glob("*.py"))
    assert len(node) >= 9 and any(f.name == "pipeline.py" for f in node)
    assert importers_of("edgesched.node.service", node) == []


@pytest.mark.parametrize(("owned", "owners"), [
    ("brains.py", ["edgesched.sim.engine", "edgesched.sim.runner"]),
    ("world.py", ["edgesched.sim.engine", "edgesched.sim.runner", "edgesched.sim.brains"]),
    ("engine.py", ["edgesched.sim.runner"]),
])
def test_the_simulator_imports_run_from_owner_to_owned(owned: str, owners: list[str]) -> None:
    imports = imported_modules(PACKAGE / "sim" / owned)
    assert imports  # the walk really sees the file's imports
    assert sorted(imports & set(owners)) == []


def test_the_check_sees_typing_only_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from edgesched.node.service import Runtime\n", encoding="utf-8")
    assert importers_of("edgesched.node.service", [bad]) == ["bad.py"]
