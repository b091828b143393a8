"""Models for the bench scripts: one of known cost (busy-wait) and a small real one (~50 us here)."""

from __future__ import annotations

import time

import torch
from torch import nn


class BusyWait(nn.Module):
    """Spins a known 200 us per call, plus a 16->4 Linear, so its true latency is known."""

    def __init__(self, micros: float = 200.0) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.seconds = micros / 1e6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return self.fc(x)


def busy_200us() -> nn.Module:
    return BusyWait(200.0)


def small_mlp() -> nn.Module:
    """256-256-256-10, about 50 us per batch of 4 on a 2-core host."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
