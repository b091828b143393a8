"""Which eval batches a distillation may train on, and which only judge: one rule for both sides.

A model whose `distill` table names no training data trains its student on its own eval batches,
minus a held-out share. Every accuracy of that model (its runs, the baseline and each candidate of
an action) is then read on the held-out batches alone, so a student is never judged on what it
learned from, and the accuracy series keeps one meaning before and after a student is kept. A kept
student's share comes from its own variant (registry.eval_holdout), whatever the config says later.

Held-out batches are spread through the eval stream, from its first batch on (batch i is held out
when the running share `fraction * (i + 1)`, rounded up, grows), not its tail: an eval set sorted by
class would otherwise hold out one class, and an eval of one batch still has one to judge on (its
student then has none to train on, and the distill action says so).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def is_held_out(index: int, fraction: float) -> bool:
    """Whether eval batch `index` (0-based) is held out for judging at held-out share `fraction`."""
    return math.ceil(fraction * (index + 1)) > math.ceil(fraction * index)


def held_out(batches: Iterable[T], fraction: float) -> Iterator[T]:
    """The batches kept for judging."""
    return (b for i, b in enumerate(batches) if is_held_out(i, fraction))


def training(batches: Iterable[T], fraction: float) -> Iterator[T]:
    """The batches a student may train on: all the others."""
    return (b for i, b in enumerate(batches) if not is_held_out(i, fraction))
