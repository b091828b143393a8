"""Import paths (`package.module:attr`): whether one points at something, found without running any
of it (config validation), and the object it names (the worker, which does run it).

A misspelt factory would otherwise pass the config and show up only as failed runs. Importing the
module to check would run the user's code (and torch) in the command-line process, so the module is
located with the import system's finders (no package `__init__` runs) and its source is parsed for a
top-level definition of the name. What cannot be decided that way (an extension module, a module
`__getattr__`, `import *`) is taken as found: the worker will say.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from typing import Any


def missing(import_path: str, search: list[str]) -> str | None:
    """Why `import_path` cannot be found from `search` + sys.path, or None when it can (or may)."""
    module, _, name = import_path.partition(":")
    spec = _find_module(module, search)
    if spec is None:
        return f"no module named {module!r} (looked in {', '.join(search) or 'sys.path'} and the environment)"
    if not name or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    try:
        defined = _names_in(spec.origin, os.stat(spec.origin).st_mtime_ns)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"{spec.origin}: cannot be read: {exc}"
    head = name.split(".")[0]
    if defined is None or head in defined:
        return None
    return f"module {module!r} ({spec.origin}) defines no {head!r}"


@functools.lru_cache(maxsize=256)
def _names_in(origin: str, mtime_ns: int) -> frozenset[str] | None:
    """A module file's top-level names, parsed once per version of the file (500 models built by one
    module cost one parse)."""
    names = _top_level_names(ast.parse(Path(origin).read_bytes(), filename=origin))
    return None if names is None else frozenset(names)


def _find_module(module: str, search: list[str]) -> ModuleSpec | None:
    parts = module.split(".")
    spec = PathFinder.find_spec(parts[0], [*search, *sys.path])
    if spec is None:
        try:  # other finders (editable installs, zip imports) locate without executing a top-level module
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            return None
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    return spec


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names a module may bind at the top level (any branch of an `if`/`try`/`with` counts); None
    when it may bind others that a parse cannot see (`import *`, a module `__getattr__`)."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return names


def resolve(path: str) -> Callable[..., Any]:
    """'package.module:attr.sub' -> the object; errors name the path."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path} is not callable")
    function: Callable[..., Any] = obj
    return function
