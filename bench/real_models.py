"""Small real CPU models for bench/detection_real.py, named in a config as "bench.real_models:NAME".

An MLP 512 -> H -> H -> 512 (fixed weights, eval mode): matmul-bound, so at batch 64+ two threads
are clearly faster than one, and widening H raises the latency with the FLOPs (2.1 M multiply-adds
per row at H = 1024, 3.9 M at H = 1536). `mlp` is the model as deployed (H = 1024); `wide_mlp` is the
same model with its hidden layers widened (H = 1536), the "model change" of the bench. Only worker
processes import this module (the bench puts the repository root on PYTHONPATH); the bench script
itself never imports torch.
"""

from __future__ import annotations

from torch import nn

from monitor.examples.models import seeded_mlp

IO_WIDTH = 512
HIDDEN = 1024
WIDE_HIDDEN = 1536
SEED = 0


def make_mlp(hidden: int, io_width: int = IO_WIDTH, seed: int = SEED) -> nn.Sequential:
    """A io -> hidden -> hidden -> io MLP with the same weights on every call, in eval mode."""
    return seeded_mlp([io_width, hidden, hidden, io_width], seed)


def mlp() -> nn.Sequential:
    """Factory: the MLP as deployed (hidden width 1024)."""
    return make_mlp(HIDDEN)


def wide_mlp() -> nn.Sequential:
    """Factory: the same MLP with its hidden layers widened to 1536 (about 1.9x the FLOPs)."""
    return make_mlp(WIDE_HIDDEN)
