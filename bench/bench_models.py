"""A small real model for the bench scripts (~50 us here); the busy-wait one of known cost is tests/workloads.py's."""

from __future__ import annotations

import torch
from torch import nn


def small_mlp() -> nn.Module:
    """256-256-256-10, about 50 us per batch of 4 on a 2-core host."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
