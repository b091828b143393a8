"""What a non-inference series times, as every layer passes it: a training step (`TrainSpec`) and
concurrent load (`LoadSpec`). The config validates them, the registry plans a series per batch size
(train) or per concurrency level (load), the worker builds and times them (harness/train_step.py,
harness/load.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}
Amp = Literal["bf16", "fp16"]


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """How to train the model for one timed step: a loss and an optimiser by name or import path
    (`module:attr`), a learning rate, and optionally autocast."""

    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    lr: float = 0.01
    amp: Amp | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        return cls(**data)


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPUs on which bf16 autocast can pay off


def amp_modes(device: str, cpu_flags: list[str]) -> list[Amp]:
    """The autocast modes worth timing for a training step here: fp16 and bf16 on a GPU, bf16 on a CPU
    with native bf16 (elsewhere it is emulated, and several times slower: bench/RESULTS.md §20)."""
    if device.startswith("cuda"):
        return ["bf16", "fp16"]
    return ["bf16"] if set(NATIVE_BF16_FLAGS) & set(cpu_flags) else []


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How one concurrency level is driven: its callers (threads sharing one model, or processes with
    a model each), for `duration_s` after `warmup_s`."""

    concurrency: int
    duration_s: float = 5.0
    warmup_s: float = 1.0
    processes: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSpec:
        return cls(**data)
