"""Slow drift in the newest stretch of a series: one finding for a steady creep, not a staircase.

A cache that grows, fragmentation, inputs that grow with the data: latency or memory that creeps up
a little every run is one cause, and a monitor should say so once, with its slope, rather than raise
a step finding every time the creep has added up to the minimum effect.

The test fits a hinge to the series since its last step: flat until some run, then a straight line
(the start is scanned over every run, all at once with cumulative sums), and asks three things:

1. the hinge explains the points better than one level, beyond what scanning the start could do by
   chance (an F test of the slope, Bonferroni-corrected over the starts scanned);
2. it also explains them better than the best single step, by as much (the same test against the
   step's residuals): a jump is a step finding's business (changepoints.py), a ramp is this one's,
   and a young step, a few runs at a new level, looks like a short steep ramp until it settles;
3. the line has moved the level by at least the metric's minimum effect since it began.

Outliers are clipped first, as for steps (changepoints.hampel), so a burst does not make a ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from monitor.core.series import STAIR_SLACK_RUNS
from monitor.detection.changepoints import (
    DetectionOptions,
    hampel,
    neighbourhood_median,
    noise_scale,
    step_at,
)
from monitor.detection.points import ChangePoint
from monitor.detection.scipy_stats import stats
from monitor.detection.serial import hinge_fit

MIN_RAMP = 8  # runs a line must span before it is a drift (fewer: a step still settling)
MIN_POINTS = 20  # runs since the last step before a drift is looked for


@dataclass(frozen=True, slots=True)
class DriftPoint:
    """A steady movement that starts at `index` of the series given and lasts to its newest point."""

    index: int
    direction: Literal["up", "down"]
    level: float  # the fitted level where it began
    slope: float  # per point, in the series' units
    rel_slope: float  # slope / level
    rel_change: float  # how far the line has moved the level by the newest point, relative
    p_value: float  # of the slope, corrected for the scan over its start
    points: int  # from its start to the newest point


def detect_drift(values: np.ndarray, options: DetectionOptions) -> DriftPoint | None:
    """The drift of `values` (the stretch since the series' last step, oldest first), or None.

    NaN and infinite points are skipped; `index` refers to the series as given.
    """
    x = np.asarray(values, dtype=float)
    keep = np.flatnonzero(np.isfinite(x))
    y = x[keep]
    n = y.size
    if n < MIN_POINTS:
        return None
    centre = neighbourhood_median(y)
    z = hampel(y, noise_scale(y, centre), centre=centre)
    fit = hinge_fit(z, min_ramp=MIN_RAMP - 1)  # a start and MIN_RAMP - 1 points on the ramp after it
    assert fit is not None  # n >= MIN_POINTS
    sse_hinge, slope, level, start = fit
    sse_flat = float(np.sum((z - z.mean()) ** 2))
    sse_step = _best_step_sse(z, options.min_segment)
    if sse_hinge >= min(sse_flat, sse_step) or level == 0.0:
        return None
    scale = max(sse_hinge / (n - 3), 1e-300)
    scans = n - MIN_RAMP  # starts (and step positions) scanned: a Bonferroni bound
    p = min(1.0, float(stats.f.sf((sse_flat - sse_hinge) / scale, 1, n - 3)) * scans)
    # A young step looks like a short steep ramp: the line must beat the best step by as much.
    p_vs_step = min(1.0, float(stats.f.sf((sse_step - sse_hinge) / scale, 1, n - 3)) * scans)
    p = max(p, p_vs_step)
    reach = n - 1 - start
    rel_change = slope * reach / abs(level)
    if p > options.alpha or abs(rel_change) < options.min_effect:
        return None
    return DriftPoint(
        index=int(keep[start]), direction="up" if slope > 0 else "down", level=level, slope=slope,
        rel_slope=slope / abs(level), rel_change=rel_change, p_value=p, points=reach + 1,
    )


def fold_drift(
    values: np.ndarray, points: list[ChangePoint], options: DetectionOptions
) -> tuple[list[ChangePoint], DriftPoint | None]:
    """The steps and the drift of a series, from the steps detect_changes found in it.

    A creep that has gone on long enough is cut by the step search into stairs, each one minimum
    effect high. The earliest stretch (from the start, or from a step) that is one drift to its end
    takes the stairs inside it: those steps are folded into the drift, provided the drift's line
    fits the stretch better than the stairs do (levels that are flat between real steps are not a
    creep: by the Bayesian information criterion, which charges the stairs their extra levels). A
    step inside a drift is kept when it is a jump of its own, i.e. still a step once the
    drift's line is taken away.
    """
    x = np.asarray(values, dtype=float)
    for start in [0, *(p.index for p in points)]:
        inside = sorted((p for p in points if p.index > start), key=lambda p: -abs(p.rel_change))
        # A real step on top of a drift breaks the hinge, or is taken for part of its ramp: look
        # again with the largest steps taken away (two only while a stair is left besides them), and
        # keep the reading that explains the stretch best for its parameters (BIC).
        tries = [[], inside[:1]] + ([inside[:2]] if len(inside) > 2 else [])
        folds = [f for jumps in tries if len(jumps) <= len(inside) and (f := _fold_from(x, start, points, jumps,
                                                                                       options)) is not None]
        if folds:
            best = min(folds, key=lambda f: f[2])
            return best[0], best[1]
    return points, None


def _fold_from(
    x: np.ndarray, start: int, points: list[ChangePoint], jumps: list[ChangePoint], options: DetectionOptions
) -> tuple[list[ChangePoint], DriftPoint, float] | None:
    """The steps and the drift when x[start:] is one drift to its end, once the `jumps` (steps
    thought to be real ones on top of it) are taken away, with the BIC of that reading; None when
    it is not."""
    y = _without(x, jumps)
    drift = detect_drift(y[start:], options)
    if drift is None:
        return None
    drift = _shifted(drift, start)
    stairs = [p for p in points if p.index >= drift.index - STAIR_SLACK_RUNS and p not in jumps]
    if any(p.direction != drift.direction for p in stairs):
        return None  # a move back against the drift: the stretch is not one creep
    edges = [p.index for p in points if p.index > start and p not in jumps]
    if stairs and not _line_beats_stairs(y, start, drift, edges):
        return None
    if any(not _jump_of_its_own(_without(x, [j for j in jumps if j is not p]), p, drift, options) for p in jumps):
        return None
    kept = [p for p in points if p.index < drift.index - STAIR_SLACK_RUNS and p not in jumps]
    kept += jumps + [p for p in stairs if _jump_of_its_own(y, p, drift, options)]
    n = int(np.isfinite(x[start:]).sum())
    bic = n * math.log(max(_line_sse(y, start, drift), 1e-300) / n) + (3 + 2 * len(jumps)) * math.log(n)
    return sorted(kept, key=lambda p: p.index), drift, bic


def _without(x: np.ndarray, jumps: list[ChangePoint]) -> np.ndarray:
    """The series with each jump taken away from its index on (its size: the medians of the five
    points either side)."""
    y = x.copy()
    for jump in jumps:
        k = jump.index
        before, after = x[max(0, k - 5) : k], x[k : k + 5]
        before, after = before[np.isfinite(before)], after[np.isfinite(after)]
        if before.size and after.size:
            y[k:] -= float(np.median(after) - np.median(before))
    return y


def _shifted(drift: DriftPoint, offset: int) -> DriftPoint:
    return DriftPoint(drift.index + offset, drift.direction, drift.level, drift.slope, drift.rel_slope,
                      drift.rel_change, drift.p_value, drift.points)


def _line_beats_stairs(x: np.ndarray, start: int, drift: DriftPoint, edges: list[int]) -> bool:
    """Whether the drift's hinge (level, slope, start) explains x[start:] better than one level per
    stretch between the steps (a level and a position per step), by BIC."""
    n = int(np.isfinite(x[start:]).sum())
    line, stairs = _line_sse(x, start, drift), _stairs_sse(x, start, edges)
    tiny = 1e-300
    bic_line = n * math.log(max(line, tiny) / n) + 3 * math.log(n)
    bic_stairs = n * math.log(max(stairs, tiny) / n) + (2 * len(edges) + 1) * math.log(n)
    return bic_line < bic_stairs


def _line_sse(x: np.ndarray, start: int, drift: DriftPoint) -> float:
    """Residual sum of squares of the drift's hinge over x[start:] (finite points)."""
    i = np.arange(start, x.size, dtype=float)
    fitted = drift.level + drift.slope * np.clip(i - drift.index, 0.0, None)
    residual = x[start:] - fitted
    return float(np.sum(residual[np.isfinite(residual)] ** 2))


def _stairs_sse(x: np.ndarray, start: int, edges: list[int]) -> float:
    """Residual sum of squares of one level (the mean) per stretch between the steps, over x[start:]."""
    total = 0.0
    for lo, hi in zip([start, *edges], [*edges, x.size], strict=True):
        part = x[lo:hi]
        part = part[np.isfinite(part)]
        if part.size:
            total += float(np.sum((part - part.mean()) ** 2))
    return total


def _jump_of_its_own(x: np.ndarray, step: ChangePoint, drift: DriftPoint, options: DetectionOptions) -> bool:
    """Whether a step inside a drift is still a step once the drift's line is taken away."""
    ramp = np.clip(np.arange(x.size, dtype=float) - drift.index, 0.0, None) * drift.slope
    return step_at(x - ramp, step.index, x.size, options) is not None


def _best_step_sse(z: np.ndarray, min_segment: int) -> float:
    """Residual sum of squares of the best two-level fit (a step) with `min_segment` points a side."""
    n = z.size
    k = np.arange(1, n, dtype=float)
    s1 = np.cumsum(z)[:-1]
    total = float(z.sum())
    gain = s1**2 / k + (total - s1) ** 2 / (n - k) - total**2 / n
    gain[: max(min_segment - 1, 0)] = -math.inf
    gain[n - min_segment :] = -math.inf
    return float(np.sum((z - z.mean()) ** 2) - np.max(gain))
