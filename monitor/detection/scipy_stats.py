"""scipy.stats, loaded on its first use rather than on import.

Importing scipy.stats takes about a second of CPU (most of a `perfguard status`), and only testing a
change needs it: commands that read or list history, and the daemon until its first check, do not
pay for it. `importlib.util.LazyLoader` is the standard library's way to defer a module's execution
until an attribute of it is read.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

NAME = "scipy.stats"


def _lazy(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


stats = _lazy(NAME)
