"""Variants in the worker: rebuild an optimised variant of a model, and save one safely.

A variant is the factory's module, each recipe's structure applied in turn, then its saved weights.
Weights are a plain state dict, written atomically and fsynced, identified by sha256, and read back
with `torch.load(weights_only=True)` only after the hash matches, so a tampered or half-written
file is refused rather than unpickled. A variant whose last recipe runs on another runtime
(TorchScript, ONNX Runtime) saves that runtime's whole model instead, checked the same way before
it is loaded (transforms/runtimes.py). Runs inside the worker only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from monitor.core import catalog
from monitor.harness.artifacts import open_verified, sha256_of
from monitor.harness.protocol import VariantSpec

# The file a candidate of each runtime is saved as (a state dict, for eager candidates: weights.pt).
ARTIFACT_NAMES = {"onnxruntime": "model.onnx", "torchscript": "model.ts"}
STARTS_ANEW = ("distill",)  # recipes whose candidate is another model (built from its own factory)


def runtime(spec: VariantSpec) -> str | None:
    """The runtime the variant runs on, when its last recipe is not eager torch (then its saved file
    is that runtime's whole model)."""
    return catalog.runtime_of(spec.steps[-1].recipe) if spec.steps else None


def needs_base(spec: VariantSpec) -> bool:
    """Whether the variant is built from the factory's model: not when a step made another model (a
    distilled student), after which nothing of the factory's remains."""
    return _restart(spec) is None


def _restart(spec: VariantSpec) -> int | None:
    """The index of the last step that made a model of its own (distill), if any."""
    starts = [i for i, step in enumerate(spec.steps) if step.recipe in STARTS_ANEW]
    return starts[-1] if starts else None


def build_variant(
    model: Any | None, spec: VariantSpec, args: tuple[Any, ...], kwargs: dict[str, Any], device: str
) -> Any:
    """The variant `spec` of the freshly built `model` (already on `device`), ready to call. `model` may
    be None when the variant does not need it (`needs_base`)."""
    import torch

    from monitor.transforms import distill, recipes, runtimes

    if runtime(spec):
        last, what = spec.steps[-1], f"model of variant {spec.name!r}"
        with open_verified(Path(spec.weights_path or ""), spec.weights_sha256, what) as file:
            return runtimes.load(last.recipe, file, device, last.params)
    steps = spec.steps
    restart = _restart(spec)
    if restart is not None:
        model, steps = distill.student(steps[restart].params, torch.device(device)), steps[restart + 1:]
    if model is None:
        raise ValueError(f"variant {spec.name!r} is built from the factory's model, and none was given")
    for step in steps:
        model = recipes.structure(step.recipe, model, args, kwargs, step.params)
    if spec.weights_path is not None:
        with open_verified(Path(spec.weights_path), spec.weights_sha256, f"weights of variant {spec.name!r}") as handle:
            state = torch.load(handle, map_location=device, weights_only=True)
        model.load_state_dict(state)
    model = model.eval()
    if any(catalog.recipe(step.recipe).compiles for step in spec.steps):
        with torch.inference_mode():  # torch.compile compiles on the first call: not inside a timed warm-up
            model(*args, **kwargs)
    return model


def save_candidate(model: Any, folder: Path, recipe: str) -> tuple[Path, str]:
    """Save a candidate built with `recipe` into `folder`: its state dict (weights.pt), or its whole
    model where the recipe runs on another runtime (model.onnx, model.ts); the path and its sha256."""
    import torch

    from monitor.transforms import runtimes

    on = catalog.recipe(recipe).runtime
    path = folder / ARTIFACT_NAMES.get(on or "", "weights.pt")
    if on:
        return path, _write(path, lambda handle: runtimes.save(model, handle))

    def weights(handle: IO[bytes]) -> None:
        # Outside inference_mode: some quantized tensors refuse to be saved from inside it.
        with torch.inference_mode(False):
            torch.save(model.state_dict(), handle)

    return path, _write(path, weights)


def _write(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """Write `path` atomically and durably with `write`; its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            digest = sha256_of(handle)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return digest
