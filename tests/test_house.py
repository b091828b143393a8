"""The house rules the linters do not check: every function of the production code stays short
(ruff's C901 keeps each below complexity 15; import-linter keeps the layers, in `make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("monitor", "rules", "storage", "reports")
MAX_LINES = 59  # decorators, signature and docstring included


def functions() -> list[tuple[str, int]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "versions" in path.parts:  # Alembic migrations: generated schema steps
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    assert node.end_lineno is not None
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - first + 1))
    return found


def test_every_function_of_the_production_code_is_under_60_lines() -> None:
    found = functions()
    assert len(found) > 500  # the walk found the code
    assert [(where, lines) for where, lines in found if lines > MAX_LINES] == []
