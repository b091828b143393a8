"""What change detection reports on one series, shared by the search (changepoints.py) and the
confirmation from raw samples (confirm.py), so that neither imports the other's module for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class ChangePoint:
    """A shift that starts at `index` (the first point of the new level) in the series given."""

    index: int
    direction: Literal["up", "down"]
    before: float  # median of the segment before
    after: float  # median of the segment after
    rel_change: float  # after / before - 1
    p_value: float  # scan-corrected p-value of the split's t statistic
    t_stat: float
    samples_p_value: float | None = None  # confirmation from raw samples, when given
    samples_interval: tuple[float, float] | None = None  # 95 % interval of the relative change
