"""What the rule tests share: configs with `[[rules]]`, stored runs with steps in them, and the example
plugin packages (tests/plugins) installed for real, through pip, into a folder put on the path."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.config import LoadedConfig, load_config
from monitor.core.runs import EnvFingerprint, RunMetrics, RunRecord
from storage.db import Database
from storage.queries import save_runs
from tests.cli_helpers import (
    FAST_HARNESS,
    TESTS_DIR,
    tiny_model,
    toml_value,
    write_config,
)
from tests.storage_helpers import T0

MODEL = "m"
PLUGIN_PACKAGES = ("team_rules", "broken_rules")
_installed: dict[str, Path] = {}


def rules_toml(rules: list[dict[str, Any]]) -> str:
    """`[[rules]]` tables, one per dict."""
    return "".join(
        "\n[[rules]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in rule.items()) for rule in rules
    )


def rules_config(tmp_path: Path, rules: list[dict[str, Any]], **model_fields: Any) -> LoadedConfig:
    """A config of one model `m` (fields as given) and these rules; detection without references
    (neither the A/B nor relative runs)."""
    path = write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL, **model_fields)],
                        harness={**FAST_HARNESS, "relative": False},
                        extra="\n[detection]\nconfirm = false\n" + rules_toml(rules))
    return load_config(path)


def run(i: int, *, batch_size: int = 8, device: str = "cpu", flags: tuple[str, ...] = (), status: str = "ok",
        **metrics: float | None) -> RunRecord:
    """The i-th run of `m` (ten minutes apart) with the given metrics."""
    started = T0 + timedelta(minutes=10 * i)
    return RunRecord(
        model=MODEL, variant="baseline", device=device, batch_size=batch_size, status=status,  # type: ignore[arg-type]
        error=None if status == "ok" else "RuntimeError: boom", started_at=started,
        finished_at=started + timedelta(seconds=3), metrics=RunMetrics(**metrics) if status == "ok" else RunMetrics(),
        env=EnvFingerprint(torch="2.13.0+cpu", threads=2, host="bench-1"), flags=list(flags),
    )


def store_steps(db: Database, before: int, after: int, *, start: int = 0, seed: int = 0, cv: float = 0.01,
                batch_size: int = 8, device: str = "cpu", **levels: tuple[float, float]) -> list[RunRecord]:
    """`before` runs at the first level of each metric, then `after` runs at the second, with noise."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(before + after):
        figures = {name: level[i >= before] * (1 + cv * rng.standard_normal()) for name, level in levels.items()}
        records.append(run(start + i, batch_size=batch_size, device=device, **figures))
    save_runs(db, records)
    return records


def install_plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example plugin packages into a folder (once per session); the folder.

    A real install: pip builds each package with setuptools and writes its dist-info with the
    entry points, which is all discovery reads. Built from a copy, so the source tree stays clean.
    """
    if "dir" not in _installed:
        work = tmp_path_factory.mktemp("plugins")
        sources = []
        for name in PLUGIN_PACKAGES:
            shutil.copytree(TESTS_DIR / "plugins" / name, work / "src" / name)
            sources.append(str(work / "src" / name))
        target = work / "site"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
             "--no-deps", "--no-build-isolation", "--target", str(target), *sources],
            check=True, capture_output=True, text=True, timeout=120,
        )
        _installed["dir"] = target
    return _installed["dir"]


def plugins_on_path(folder: Path) -> Iterator[Path]:
    """The installed plugins importable and discoverable in this process, until the generator ends."""
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for name in list(sys.modules):
            if name.split(".")[0] in PLUGIN_PACKAGES:
                del sys.modules[name]
        importlib.invalidate_caches()
