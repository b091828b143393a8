"""One full training step of a model, as a callable the sampler can time: forward, loss, backward,
optimiser step.

Teams that retrain nightly care about iteration speed as much as serving speed, and a training step
regresses for its own reasons (a backward kernel, an optimiser, autocast). `make_step` builds the step
from a small spec: a loss by name (`cross_entropy` against random class labels, `mse` against zeros) or
an import path of `fn(output, inputs) -> loss`, an optimiser by name (`sgd`, `adam`, `adamw`) or an
import path of a `torch.optim.Optimizer` class, a learning rate, and optionally autocast (`bf16`,
`fp16`: the AMP candidates). The targets are made once, so every step costs the same. The model
really trains: its weights move with every step. Runs inside the worker; torch is imported in the
functions so that importing this module is cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from monitor.core.import_paths import resolve
from monitor.core.workloads import LOSSES, OPTIMIZERS, TrainSpec

__all__ = ["TrainSpec", "TrainSpecError", "make_step"]


class TrainSpecError(ValueError):
    """The training step cannot be built as specified; the message names the field."""


def make_step(
    model: Any, args: tuple[Any, ...], spec: TrainSpec, device: str, kwargs: dict[str, Any] | None = None
) -> Callable[[], float]:
    """The training step of `model` on `args` (and `kwargs`): call it to train once; it returns the
    loss (a float, read after the step, which synchronises the device). The model is put in train mode."""
    import torch

    kwargs = kwargs or {}
    loss_of = _loss(spec, model, args, kwargs)  # its targets from an eval-mode call: no batch-norm update
    model.train()
    optimizer = _optimizer(spec, model)
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    if spec.amp is not None:
        dtype = torch.bfloat16 if spec.amp == "bf16" else torch.float16
        kind = "cuda" if device.startswith("cuda") else "cpu"
        autocast = lambda: torch.autocast(kind, dtype=dtype)  # noqa: E731 - a context factory
    scaler = torch.amp.GradScaler(device="cuda") if spec.amp == "fp16" and device.startswith("cuda") else None

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_of(model(*args, **kwargs))
        if scaler is not None:  # fp16 gradients underflow without scaling
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    return step


def _optimizer(spec: TrainSpec, model: Any) -> Any:
    import torch

    if not spec.lr > 0:
        raise TrainSpecError(f"train.lr must be positive, not {spec.lr!r}")
    if spec.optimizer in OPTIMIZERS:
        kind = getattr(torch.optim, OPTIMIZERS[spec.optimizer])
    elif ":" in spec.optimizer:
        kind = resolve(spec.optimizer)
    else:
        raise TrainSpecError(f"train.optimizer {spec.optimizer!r} is not one of {', '.join(OPTIMIZERS)} "
                             "nor an import path 'module:Class'")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainSpecError(f"{type(model).__name__} has no parameter to train")
    return kind(params, lr=spec.lr)


def _loss(spec: TrainSpec, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    """The loss of one output; targets made once, from the model's output on `args`."""
    import torch

    if spec.loss not in LOSSES:
        if ":" not in spec.loss:
            raise TrainSpecError(f"train.loss {spec.loss!r} is not one of {', '.join(LOSSES)} "
                                 "nor an import path 'module:function'")
        custom = resolve(spec.loss)
        return lambda output: custom(output, args)
    with torch.no_grad():
        probe = model(*args, **kwargs)
    if not isinstance(probe, torch.Tensor) or not probe.is_floating_point():
        raise TrainSpecError(f"train.loss {spec.loss!r} needs a model returning one float tensor, not "
                             f"{type(probe).__name__}; name a loss function 'module:function' instead")
    generator = torch.Generator().manual_seed(0)
    if spec.loss == "mse":
        target = torch.zeros_like(probe)
        return lambda output: torch.nn.functional.mse_loss(output.float(), target)
    if probe.dim() < 2:
        raise TrainSpecError(f"train.loss 'cross_entropy' needs class scores [batch, classes], not shape "
                             f"{tuple(probe.shape)}")
    labels = torch.randint(0, probe.shape[1], (probe.shape[0], *probe.shape[2:]), generator=generator)
    labels = labels.to(probe.device)
    return lambda output: torch.nn.functional.cross_entropy(output.float(), labels)
