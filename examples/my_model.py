"""Your own model, benchmarked from the folder of its config: `factory = "my_model:build"` in
examples/perfguard.toml resolves here (a config's folder comes first on the worker's path), so nothing
needs installing. Replace `build` with what loads your checkpoint; `eval_batches` is optional."""

from __future__ import annotations

import torch
from torch import nn


def build() -> nn.Module:
    """Any callable returning an nn.Module will do; perfguard calls it in a fresh worker per run."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out (inputs, labels) batches: perfguard stores top-1 accuracy with every run. Here the
    labels are the model's own answers on half the rows, so the accuracy reads 0.5."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(128, 64, generator=generator)
    with torch.no_grad():
        labels = build()(inputs).argmax(dim=1)
    labels[::2] = (labels[::2] + 1) % 10
    return [(inputs[:64], labels[:64]), (inputs[64:], labels[64:])]
