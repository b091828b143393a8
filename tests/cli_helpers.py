"""Writing real config files and running the real `perfguard` console script, for the CLI and config tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
# The console script installed next to this interpreter: what a user types, not an in-process call.
PERFGUARD = shutil.which("perfguard", path=os.path.dirname(sys.executable))

# Budgets small enough that a worker takes about two seconds, mostly importing torch.
FAST_HARNESS = {"min_samples": 20}
FAST_MAX_TIME_S = 0.3
TINY_INPUTS = [{"shape": [8, 16]}]


def free_port() -> int:
    """A loopback port nothing listens on (at the moment of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def toml_value(value: Any) -> str:
    """One TOML value (inline tables for dicts); enough for the configs these tests write."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def tiny_model(name: str, **fields: Any) -> dict[str, Any]:
    """A cheap model table: `workloads:tiny` on an 8x16 input with a 0.3 s budget, `fields` override."""
    table: dict[str, Any] = {
        "name": name,
        "factory": "workloads:tiny",
        "inputs": TINY_INPUTS,
        "max_time_s": FAST_MAX_TIME_S,
    }
    table.update(fields)
    return {k: v for k, v in table.items() if v is not None}


def config_text(
    models: list[dict[str, Any]],
    *,
    storage_url: str | None = "sqlite:///perfguard.db",
    harness: dict[str, Any] | None = None,
    extra: str = "",
) -> str:
    """A whole config file: [storage], [harness] (fast by default), one [[models]] table each, `extra`."""
    lines = []
    if storage_url is not None:
        lines += ["[storage]", f"url = {toml_value(storage_url)}", ""]
    harness = FAST_HARNESS if harness is None else harness
    if harness:
        lines += ["[harness]", *(f"{k} = {toml_value(v)}" for k, v in harness.items()), ""]
    for model in models:
        lines += ["[[models]]", *(f"{k} = {toml_value(v)}" for k, v in model.items()), ""]
    return "\n".join(lines) + extra


def write_config(path: Path, models: list[dict[str, Any]], **kwargs: Any) -> Path:
    path.write_text(config_text(models, **kwargs), encoding="utf-8")
    return path


@dataclass(frozen=True)
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The whole of stdout as strict JSON: fails on anything else, NaN and Infinity included."""

        def reject(token: str) -> Any:
            raise ValueError(f"non-standard JSON token {token} on stdout")

        return json.loads(self.stdout, parse_constant=reject)

    def __str__(self) -> str:
        return f"perfguard {' '.join(self.args)} -> {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def perfguard(*args: str, config: Path | None = None, cwd: Path | None = None, timeout: float = 180) -> CliResult:
    """Run the `perfguard` console script in a subprocess; workers find `workloads` on PYTHONPATH."""
    assert PERFGUARD, "the perfguard console script is not installed next to this Python"
    argv = list(args) + (["--config", str(config)] if config is not None else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [PERFGUARD, *argv],
        cwd=cwd or (config.parent if config is not None else None),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)
