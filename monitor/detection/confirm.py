"""Confirming a change point with the raw per-iteration latencies of the runs on either side.

Raw samples within one run are not independent (the host drifts within a process, see
bench/RESULTS.md), so a test that treats the thousands of samples as independent would call any
difference significant. The interval therefore comes from a cluster bootstrap: whole runs are
resampled, each run summarised by its quantiles with equal weight. The Mann-Whitney U p-value of the
pooled samples is reported too, but it is the interval that confirms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from monitor.detection.points import ChangePoint
from monitor.detection.scipy_stats import stats

RUNS_PER_SIDE = 10  # the runs nearest the change on each side
_QUANTILES = np.linspace(0.0, 1.0, 1001)  # per-run sketch, fine enough for a p99
_BOOTSTRAP = 1000
_MWU_MAX = 5000  # pooled samples per side for the U test (it is O(n log n), and p saturates anyway)


def confirm_with_samples(
    change: ChangePoint,
    values: np.ndarray,
    samples: Sequence[Sequence[float] | None],
    earlier: Sequence[ChangePoint],
    seed: int = 0,
    quantile: float = 0.5,
) -> ChangePoint:
    """`change` with `samples_interval` (95 %, relative change of the samples' `quantile`: the median
    for a p50 series, 0.99 for p99) and `samples_p_value`.

    Uses up to RUNS_PER_SIDE runs with samples on each side, never reaching past the previous change
    point. Left unchanged when either side has no samples.
    """
    start = earlier[-1].index if earlier else 0
    finite = np.isfinite(values)
    before = [run for i in range(start, change.index) if finite[i] and (run := samples[i])]
    after = [run for i in range(change.index, len(values)) if finite[i] and (run := samples[i])]
    before, after = before[-RUNS_PER_SIDE:], after[:RUNS_PER_SIDE]
    if not before or not after:
        return change
    interval = bootstrap_interval(before, after, seed, quantile)
    alternative = "greater" if change.direction == "up" else "less"
    rng = np.random.default_rng(seed)
    pooled_after, pooled_before = (_subsample(np.concatenate(side), rng) for side in (after, before))
    p = float(stats.mannwhitneyu(pooled_after, pooled_before, alternative=alternative).pvalue)
    return replace(change, samples_interval=interval, samples_p_value=p)


def bootstrap_interval(
    before: Sequence[Sequence[float]], after: Sequence[Sequence[float]], seed: int = 0, quantile: float = 0.5
) -> tuple[float, float]:
    """95 % interval of q(after) / q(before) - 1 for the samples' `quantile` q, resampling whole runs."""
    rng = np.random.default_rng(seed)
    sketches = []
    for side in (before, after):
        sketch = np.stack([np.quantile(np.asarray(run, dtype=float), _QUANTILES) for run in side])
        picks = rng.integers(0, len(side), size=(_BOOTSTRAP, len(side)))
        sketches.append(np.quantile(sketch[picks].reshape(_BOOTSTRAP, -1), quantile, axis=1))
    ratio = sketches[1] / sketches[0] - 1.0
    low, high = np.quantile(ratio, [0.025, 0.975])
    return float(low), float(high)


def confirms(change: ChangePoint) -> bool | None:
    """Whether the raw samples confirm the change: their interval excludes no change on its side."""
    if change.samples_interval is None:
        return None
    low, high = change.samples_interval
    return low > 0 if change.direction == "up" else high < 0


def _subsample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size <= _MWU_MAX:
        return values
    return rng.choice(values, size=_MWU_MAX, replace=False)
