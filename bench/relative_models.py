"""Compute-bound models for bench/relative.py, each with a changed version that is a real regression.

Four families (a CNN, an MLP, a small transformer encoder, a GRU), seeded weights, no download. The
changed versions do what model teams do by accident: a wider layer, an extra layer. bench/relative.py
measures how much slower each one is by timing the pair interleaved in one process, the size a finding
should report.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monitor.examples.models import seeded_mlp

SEED = 0


class Cnn(nn.Module):
    """The seed article's CNN over 3x32x32 input, its second conv `conv2` channels wide."""

    def __init__(self, conv2: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, conv2, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(conv2 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class Gru(nn.Module):
    """A GRU over 64-feature sequences, classifying from the last state."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.gru = nn.GRU(64, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _seeded(build):  # type: ignore[no-untyped-def]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build().eval()


def cnn() -> nn.Module:
    return _seeded(Cnn)


def mlp() -> nn.Module:
    return seeded_mlp([1024, 1024, 1024, 10], SEED)


def mlp_extra_layer() -> nn.Module:
    return seeded_mlp([1024, 1024, 1024, 256, 10], SEED)


def cnn_wider() -> nn.Module:
    return _seeded(lambda: Cnn(conv2=34))


def _encoder(feedforward: int = 1024) -> nn.Module:
    layer = nn.TransformerEncoderLayer(256, 4, dim_feedforward=feedforward, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def encoder() -> nn.Module:
    return _seeded(_encoder)


def encoder_wider() -> nn.Module:
    return _seeded(lambda: _encoder(feedforward=1408))


def gru() -> nn.Module:
    return _seeded(Gru)


def gru_wider() -> nn.Module:
    return _seeded(lambda: Gru(hidden=132))

