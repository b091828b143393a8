"""The house rules the linters do not check: every function of the production code stays short
(ruff's C901 keeps each below complexity 15; import-linter keeps the layers, in `make lint`)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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


def test_the_rule_plugin_contract_imports_no_database_config_or_torch() -> None:
    """A team's plugin imports rules.api: what that loads is what every rule pays for."""
    code = "import json, sys, rules.api, rules.builtin; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                           check=True).stdout))
    assert "rules.api" in loaded
    heavy = {"sqlalchemy", "alembic", "torch", "monitor.config", "storage", "storage.db", "apscheduler"}
    assert loaded & heavy == set()
