"""Who may import whom: the kit is a leaf, and the stages and offline jobs never reach into the gateway."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = "thrifty.server.kit"


def _imports(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.append((str(path.relative_to(ROOT)), node.module))
            elif isinstance(node, ast.Import):
                found += [(str(path.relative_to(ROOT)), alias.name) for alias in node.names]
    return found


def test_the_kit_imports_nothing_else_of_thrifty() -> None:
    wrong = [(f, m) for f, m in _imports(ROOT / "server" / "kit") if m.startswith("thrifty.") and not m.startswith(KIT)]
    assert wrong == []


def test_stages_and_jobs_use_only_the_kit_of_the_gateway() -> None:
    wrong = [
        (f, m)
        for package in ("router", "budgeter", "moe_runtime")
        for f, m in _imports(ROOT / package)
        if m.startswith("thrifty.server") and not m.startswith(KIT)
    ]
    assert wrong == []
