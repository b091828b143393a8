"""Variants in the worker: rebuild an optimised variant of a model, and save one safely.

A variant is the factory's module, each recipe's structure applied in turn, then its saved weights.
Weights are a plain state dict, written atomically and fsynced, identified by sha256, and read back
with `torch.load(weights_only=True)` only after the hash matches, so a tampered or half-written
file is refused rather than unpickled. Runs inside the worker only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from monitor.core import catalog
from monitor.harness.artifacts import open_verified, sha256_of
from monitor.harness.protocol import VariantSpec


def build_variant(model: Any, spec: VariantSpec, args: tuple[Any, ...], kwargs: dict[str, Any], device: str) -> Any:
    """The variant `spec` of the freshly built `model` (already on `device`), ready to call."""
    import torch

    from monitor.transforms import recipes

    for step in spec.steps:
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


def save_weights(model: Any, path: Path) -> str:
    """Write the model's state dict to `path` atomically; its sha256."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as handle:
            # Outside inference_mode: some quantized tensors refuse to be saved from inside it.
            with torch.inference_mode(False):
                torch.save(model.state_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            digest = sha256_of(handle)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return digest
