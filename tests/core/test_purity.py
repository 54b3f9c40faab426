"""core/ stays pure: no event loop, no network, no pydantic, no metrics."""

from __future__ import annotations

import ast
from pathlib import Path

import edgesched.core

FORBIDDEN = {"asyncio", "aiomqtt", "aiohttp", "pydantic", "pydantic_settings",
             "prometheus_client", "socket", "time"}
CORE = Path(edgesched.core.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_nothing_impure() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8  # the walk really sees the package
    offenders = {f.name: imported_roots(f) & FORBIDDEN for f in files}
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom aiohttp import web\n", encoding="utf-8")
    assert imported_roots(bad) == {"asyncio", "aiohttp"}
