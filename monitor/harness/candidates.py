"""Candidates in the worker: build each optimised candidate of the current variant, save it, check it.

For each requested recipe the current model is transformed (recipes.build), fine-tuned when the model
names a train hook and the recipe prunes, called once (torch.compile compiles here, not inside the
timed warm-up), saved as weights, and loaded back from disk the way the scheduler will load it: the
copy that is then timed beside the current variant is the saved artifact, not the object in memory.
A candidate that cannot be built is reported with its error; the others go on.
Runs inside the worker only.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.harness import variants
from monitor.harness.cpu_info import cpu_flags
from monitor.harness.protocol import (
    BuiltCandidate,
    CandidateRequest,
    CandidatesJob,
    RecipeStep,
    VariantSpec,
)

FIDELITY_BATCHES = 8  # example batches (seeds 0..7) the candidate's output is compared on
CALIBRATION_BATCHES = 8
# Fine-tuned after building: a structurally pruned model recovers accuracy with training. Not the L1
# unstructured one: training would refill the zeros it is made of.
FINE_TUNED_RECIPES = ("prune_structured",)


def fidelity(current: list[Any], candidate: list[Any], kind: str) -> dict[str, Any]:
    """How closely the candidate's outputs follow the current variant's on the same inputs.

    "top1": the share of rows whose arg-max agrees (a classifier's decision); "relative_error": the
    L2 norm of the difference over the norm of the current output. "auto" picks top1 for 2-D float
    outputs with more than one column, else the relative error.
    """
    import torch

    cur, cand = _rows(current), _rows(candidate)
    if cand.shape != cur.shape:
        raise ValueError(f"the candidate's output has shape {tuple(cand.shape)}, the model's {tuple(cur.shape)}")
    relative = float((cand - cur).norm() / cur.norm().clamp_min(1e-12))
    finite = bool(torch.isfinite(cand).all())
    base: dict[str, Any] = {"rows": int(cur.shape[0])}
    if not finite:
        base["non_finite"] = True  # NaN or inf in the candidate's output (fp16 overflow, say)
    if kind == "auto":
        first = _first_tensor(current[0])
        kind = "top1" if first.is_floating_point() and first.dim() == 2 and first.shape[-1] > 1 else "relative_error"
    if kind == "top1" and cur.shape[-1] > 1:
        agreement = float((cand.argmax(dim=-1) == cur.argmax(dim=-1)).float().mean())
        return {**base, "kind": "top1", "agreement": agreement if finite else None,
                "relative_error": relative if math.isfinite(relative) else None}
    # One column has no arg-max to agree on: the relative error is the only fair measure.
    return {**base, "kind": "relative_error", "value": relative if finite and math.isfinite(relative) else None}


def _rows(outputs: list[Any]) -> Any:
    """The outputs' first tensors as one [rows, features] float tensor."""
    import torch

    rows = []
    for output in outputs:
        tensor = _first_tensor(output).float()
        rows.append(tensor.flatten(0, -2) if tensor.dim() > 1 else tensor.reshape(-1, 1))
    return torch.cat(rows)


def _first_tensor(output: Any) -> Any:
    from torch.utils._pytree import tree_leaves

    for leaf in tree_leaves(output):
        if hasattr(leaf, "dim"):
            return leaf
    raise TypeError(f"the model returned no tensor ({type(output).__name__})")


def build_all(
    job: CandidatesJob,
    current_model: Any,
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]],
    calibration: list[tuple[Any, ...]] | None,
    resolve: Callable[[str], Callable[..., Any]],
    progress: Callable[[str, int], None] | None = None,
) -> list[tuple[BuiltCandidate, Any]]:
    """Build every requested candidate; (report, loaded module or None) per request, in order;
    `progress` hears from recipes that train (distillation, per epoch).

    `inputs` are the fidelity batches, the first being the example inputs the sampler times.
    Must run outside inference_mode: a train hook needs autograd.
    """
    import torch

    base = job.subjects[0].variant or VariantSpec(name="baseline")
    # no_grad, not inference_mode: a model that caches something on its first call must not keep an
    # inference tensor that a train hook would later refuse to backpropagate through.
    with torch.no_grad():
        expected = [current_model(*a, **k) for a, k in inputs]
    results = []
    for request in job.candidates:
        started = time.perf_counter()
        try:
            built, loaded = _build_one(job, request, base, current_model, inputs, calibration, expected, resolve,
                                       progress)
        except Exception as exc:  # noqa: BLE001 - one candidate's failure is its result; others go on
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            built, loaded = BuiltCandidate(label=request.label, recipe=request.recipe, error=text[-2000:]), None
        built.build_s = time.perf_counter() - started
        results.append((built, loaded))
    return results


def _build_one(
    job: CandidatesJob,
    request: CandidateRequest,
    base: VariantSpec,
    current_model: Any,
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]],
    calibration: list[tuple[Any, ...]] | None,
    expected: list[Any],
    resolve: Callable[[str], Callable[..., Any]],
    progress: Callable[[str, int], None] | None,
) -> tuple[BuiltCandidate, Any]:
    import torch

    from monitor.transforms import recipes

    refused = recipes.unavailable(request.recipe, job.device, cpu_flags())
    if refused is not None:
        raise RuntimeError(f"{request.recipe} cannot run here: {refused}")
    runtime = variants.runtime(base)
    if runtime:
        raise RuntimeError(f"{request.recipe} cannot start from variant {base.name!r}, which runs on {runtime}: "
                           "roll back to an eager variant to build candidates from it")
    args, kwargs = inputs[0]
    module, resolved = recipes.build(request.recipe, current_model, args, kwargs, calibration, request.params,
                                     progress)
    details: dict[str, Any] = {}
    if job.train and request.recipe in FINE_TUNED_RECIPES:
        tuned = resolve(job.train)(module)
        module = tuned if tuned is not None else module
        details["fine_tuned"] = job.train
    module.eval()
    with torch.inference_mode():
        built_out = [module(*a, **k) for a, k in inputs]
    path, digest = variants.save_candidate(module, Path(job.candidates_dir) / request.label, request.recipe)
    spec = VariantSpec(
        name=request.label,
        steps=[*base.steps, RecipeStep(request.recipe, resolved)],
        weights_path=str(path.resolve()),
        weights_sha256=digest,
    )
    # The timed copy is the one on disk, rebuilt as the scheduler will rebuild it.
    fresh = resolve(job.subjects[0].factory)().eval().to(job.device)
    loaded = variants.build_variant(fresh, spec, args, kwargs, job.device)
    with torch.inference_mode():
        loaded_out = [loaded(*a, **k) for a, k in inputs]
    reloaded = fidelity(built_out, loaded_out, "relative_error")
    if reloaded.get("non_finite") is None and not (reloaded["value"] is not None and reloaded["value"] <= 1e-3):
        raise RuntimeError(f"the saved candidate does not reproduce the built one (relative error {reloaded['value']})")
    details["resolved_params"] = resolved
    return (
        BuiltCandidate(
            label=request.label,
            recipe=request.recipe,
            variant=spec.to_dict(),
            fidelity=fidelity(expected, loaded_out, job.fidelity),
            details=details,
        ),
        loaded,
    )


def relabel(subject: Any, label: str, spec: dict[str, Any]) -> Any:
    """The current subject as a candidate's subject: same inputs and eval, the candidate's variant."""
    return dataclasses.replace(subject, label=label, variant=VariantSpec.from_dict(spec))
