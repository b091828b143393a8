"""Knowledge distillation: train a smaller student against the model's own soft targets.

The student (the model's `distill.student` factory) learns from the teacher's outputs on the
training batches (`distill.data`: an iterable of input batches, or of (inputs, labels); without it,
the model's eval batches less the held-out share its accuracy is read on, core/holdout.py): the KL
divergence between their softened distributions at `temperature` (scaled by T², as in Hinton et al.),
weighted by `weight`, plus cross-entropy on the labels for the rest when the batches carry them.
Outputs with one column, or not 2-D, have no distribution to soften: the student then regresses the
teacher's output (mean squared error). Training stops after `epochs` passes or `max_time_s`,
whichever comes first, and reports its progress per epoch. The candidate is judged like any other:
faster, within the tolerance, not bigger. Runs inside the worker only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from monitor.core import holdout
from monitor.core.import_paths import resolve

Progress = Callable[[str, int], None]


class DistillError(ValueError):
    """The student cannot be built or trained as configured; the message names the field."""


def student(params: dict[str, Any], device: torch.device) -> nn.Module:
    """A fresh student from its factory, on `device`: the structure its saved weights load into."""
    path = params.get("student")
    if not path:
        raise DistillError("distill.student: the model names no student factory")
    model = resolve(path)()
    if not isinstance(model, nn.Module):
        raise DistillError(f"distill.student: {path} returned {type(model).__name__}, not a torch.nn.Module")
    return model.to(device)


def build(
    teacher: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any], progress: Progress | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The student trained on the teacher's soft targets; what the training did (epochs, steps, time,
    last loss, and whether the time bound stopped it)."""
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    pupil = student(params, device)
    source = _training_batches(params)
    optimizer = torch.optim.Adam(pupil.parameters(), lr=float(params["lr"]))
    teacher.eval()
    pupil.train()
    started = time.perf_counter()
    deadline = started + float(params["max_time_s"])
    epochs = int(params["epochs"])
    steps, loss, stopped = 0, float("nan"), False
    for epoch in range(epochs):
        for inputs, labels in _batches(source(), device):
            loss = _step(teacher, pupil, optimizer, inputs, labels, params)
            steps += 1
            if time.perf_counter() >= deadline:
                stopped = True
                break
        if progress is not None:
            progress(f"distill epoch {epoch + 1}/{epochs}", steps)
        if stopped:
            break
    if steps == 0:
        where = params.get("data") or f"{params.get('eval')} less its held-out share"
        raise DistillError(f"distill.data: {where} yielded no batch")
    pupil.eval()
    return pupil, {"steps": steps, "epochs_run": epoch + 1, "train_s": round(time.perf_counter() - started, 2),
                   "final_loss": round(loss, 6), "time_bound_hit": stopped}


def _training_batches(params: dict[str, Any]) -> Callable[[], Iterable[Any]]:
    """A fresh iterable of the training batches per epoch: `data`'s, else the eval's not held out."""
    data, eval_path = params.get("data"), params.get("eval")
    if data:
        return lambda: resolve(data)()
    if eval_path:
        fraction = float(params["holdout"])
        return lambda: holdout.training(resolve(eval_path)(), fraction)
    raise DistillError("distill.data: the model names no training data, and no eval to train on")


def _batches(source: Iterable[Any], device: torch.device) -> Iterable[tuple[tuple[Any, ...], Any]]:
    """(positional inputs, labels or None) per batch, on `device`."""
    for batch in source:
        inputs, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
        inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        yield tuple(a.to(device) for a in inputs), None if labels is None else labels.to(device)


def _step(
    teacher: nn.Module, pupil: nn.Module, optimizer: Any, inputs: tuple, labels: Any, params: dict[str, Any]
) -> float:
    with torch.no_grad():
        target = teacher(*inputs).float()
    output = pupil(*inputs).float()
    if output.shape != target.shape:
        raise DistillError(f"distill.student: its output has shape {tuple(output.shape)}, the model's "
                           f"{tuple(target.shape)}")
    if output.dim() == 2 and output.shape[1] > 1:
        temperature, weight = float(params["temperature"]), float(params["weight"])
        soft = functional.kl_div(functional.log_softmax(output / temperature, dim=1),
                                 functional.softmax(target / temperature, dim=1),
                                 reduction="batchmean") * temperature**2
        loss = soft if labels is None else weight * soft + (1 - weight) * functional.cross_entropy(output, labels)
    else:
        loss = functional.mse_loss(output, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
