"""Change points in one benchmark series: robust binary segmentation, vectorised.

Why not E-divisive means (Apache Otava, MongoDB's signal-processing-algorithms)? Measured on the
synthetic grid in bench/detection.py, its permutation test on raw values is fooled by outliers (one at
the newest point reads as a change, one anywhere inflates the spread its test uses) and it costs
O(n^2) per split. This module keeps E-divisive's shape (binary segmentation with a significance test
per split) and changes the statistic:

1. Outliers are tamed first: each point is clipped to `CLIP` noise units around the median of its
   5-point neighbourhood (a Hampel filter), so a stray reading moves a mean by a bounded amount and a
   burst of them is recognisable by its spread.
2. Noise is estimated from the history itself: the median absolute successive difference, which a
   level shift does not inflate, sets the clipping scale; the pooled within-segment spread of the
   clipped values (bimodal noise included) scales the test.
3. Every split of a segment is scored at once with cumulative sums (Welch-free two-sample t
   statistic with pooled variance), so a 10,000-point series costs a few milliseconds.
4. A split is a change point only if its t statistic clears the scan-corrected significance level
   *and* the medians on either side differ by at least `min_effect` (relative). A short newest segment
   must also look like a level, not a burst: its spread must match the noise seen before.

5. A series that moves smoothly (a trend, a seasonal swing) is not read as stairs: where the residuals
   around the levels found correlate, the search runs again with each split's evidence shrunk for
   that correlation (serial.py), and a model selection keeps only the points the series supports
   with each stretch fitted as a line (selection.py). Levels in independent noise are left as found.
6. The newest change point waits while a ramp that began a few runs before it fits as well as a jump:
   a young creep is left to become a drift (drift.py), not a stair.

The result is the same whether the series is checked once or after every new point (the service does
the latter), because nothing depends on when the check ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from monitor.detection.confirm import confirm_with_samples
from monitor.detection.points import ChangePoint
from monitor.detection.scipy_stats import stats
from monitor.detection.selection import MIN_RHO, level_correlation, select
from monitor.detection.serial import hinge_rss, split_rho

CLIP = 3.5  # noise units a point may sit from its neighbourhood's median before it counts as an outlier
_WIDE, _NARROW = 7, 5  # running-median windows: inside the series, and at its newest end
# A newest segment shorter than this must look like a level, not a burst of outliers, to be reported:
# its range within 2 * CLIP noise units (the range of ten Gaussian points exceeds 7 sigma about once in
# a thousand; a burst of wild readings spreads over many noise units). A regression that also makes
# the model much noisier is reported a few runs later, once its segment is long enough.
_BURST_CHECK_POINTS = 10
RAMP_LEAD = 3  # a creep's ramp begins at least this many runs before the first stair it was cut at
_SETTLED_POINTS = 4  # a newest level this long may be as spread as half its own step
# Segments at least this long on both sides must also differ in rank (Mann-Whitney U, one-sided).
_RANK_CHECK_POINTS = 6
_RANK_ALPHA = 0.001
_UNSETTLED = object()
# The 5th-95th percentile range of (x - neighbourhood_median(x)) for standard Gaussian x
# (simulated, 10^6 points): divides the range to estimate sigma.
_RANGE_OF_RESIDUALS = 3.2679


@dataclass(frozen=True, slots=True)
class DetectionOptions:
    """What counts as a change: significant *and* at least `min_effect` relative change of the median.

    `alpha` bounds the chance that a series of pure noise yields a change point at one check, with
    the scan over all split positions accounted for. `min_segment` is the fewest points a new level
    needs before it can be reported (3: one or two odd readings are never a change).
    """

    min_effect: float = 0.05
    alpha: float = 0.001
    min_segment: int = 3
    min_baseline: int = 10  # points before a change that establish the old level


def detect_changes(
    values: Sequence[float] | np.ndarray,
    samples: Sequence[Sequence[float] | None] | None = None,
    options: DetectionOptions = DetectionOptions(),
) -> list[ChangePoint]:
    """Change points of `values` (oldest first), ordered by index.

    NaN and infinite points are skipped; indices refer to the series as given. With `samples` (raw
    per-iteration readings per point, or None for a point without them), the newest change point is
    confirmed against them: `samples_p_value` and `samples_interval` are filled in (see confirm.py).
    """
    x = np.asarray(values, dtype=float)
    keep = np.flatnonzero(np.isfinite(x))
    y = x[keep]
    if y.size < options.min_baseline + options.min_segment:
        return []
    centre = neighbourhood_median(y)
    noise = noise_scale(y, centre)
    clipped = hampel(y, noise, centre=centre)
    found: list[ChangePoint] = []
    _segment(y, clipped, 0, y.size, noise, options, found)
    supported = {c.index for c in found}
    if level_correlation(clipped, sorted(supported)) >= MIN_RHO:
        # A smooth movement: search again, weighing each split's evidence by its residuals'
        # serial correlation (serial.py), then keep what a model selection supports. (Levels in
        # independent noise skip both: the selection would only find the same correlation again.)
        found = []
        _segment(y, clipped, 0, y.size, noise, options, found, smooth=True)
        supported = set(select(clipped, [c.index for c in found]))
    cuts = sorted(supported)
    while cuts and _young_ramp(clipped, cuts):
        supported.discard(cuts.pop())
    found = sorted((c for c in found if c.index in supported), key=lambda c: c.index)
    points = [_reindex(c, int(keep[c.index])) for c in found]
    if samples is not None and points:
        points[-1] = confirm_with_samples(points[-1], x, samples, points[:-1])  # of the median
    return points


def neighbourhood_median(y: np.ndarray) -> np.ndarray:
    """The level each point is judged against: a running median that bursts cannot carry.

    Inside the series, the median of the 7 points centred on each point, so a burst of up to three
    wild readings is outvoted. The newest three points, whose centred window is not complete yet, use
    the median of the last 5: three readings at a new level then carry it (a change can be seen after
    three runs), while one or two odd ones are judged against the points before them.
    """
    n = y.size
    if n < _WIDE:
        return np.full(n, float(np.median(y))) if n else y.copy()
    wide = np.median(np.lib.stride_tricks.sliding_window_view(y, _WIDE), axis=1)
    half = _WIDE // 2
    centre: np.ndarray = wide[np.clip(np.arange(n) - half, 0, n - _WIDE)]
    centre[n - half :] = float(np.median(y[-_NARROW:]))
    return centre


def noise_scale(y: np.ndarray, centre: np.ndarray | None = None) -> float:
    """Noise of a series, estimated from its own history, in the series' units.

    The 5th-95th percentile range of the residuals from the neighbourhood median: a level shift
    moves the median with it (so a step in the history is not read as noise), outliers rarer than one
    run in twenty do not move those percentiles, and a second mode holding more than that widens them
    (so bimodal noise is seen as the spread it is, not as outliers). Scaled to estimate sigma for
    Gaussian noise. The newest points, whose running median is the least settled, are left out once
    there is enough history: noise is what the series did before, not what it is doing now.
    """
    if y.size < 4:
        return 0.0
    if centre is None:
        centre = neighbourhood_median(y)
    residuals = (y - centre)[: -_WIDE // 2] if y.size > 2 * _WIDE else y - centre
    low, high = np.percentile(residuals, [5.0, 95.0])
    sigma = float(high - low) / _RANGE_OF_RESIDUALS
    floor = 1e-6 * max(float(np.median(np.abs(y))), 1e-12)  # a perfectly flat series
    return max(sigma, floor)


def hampel(y: np.ndarray, noise: float, clip: float = CLIP, centre: np.ndarray | None = None) -> np.ndarray:
    """Replace each point further than `clip` noise units from its neighbourhood median by that median.

    A stray reading then has no weight at all, while a real level (three points or more) moves the
    neighbourhood median along with it and is kept.
    """
    if centre is None:
        centre = neighbourhood_median(y)
    return np.where(np.abs(y - centre) > clip * noise, centre, y)


def split_scores(z: np.ndarray, edge: int, left_min: int, noise: float = 0.0) -> np.ndarray:
    """Pooled-variance t statistic of (right mean - left mean) for every split of `z`.

    Element k-1 scores the split into z[:k] and z[k:]; splits leaving fewer than `left_min` points on
    the left or `edge` on the right score 0. `noise` floors the pooled standard deviation: outlier
    replacement narrows the cleaned values, and a short history can look quieter than it is.
    """
    n = z.size
    z = z - z.mean()
    k = np.arange(1, n, dtype=float)
    s1 = np.cumsum(z)[:-1]
    q1 = np.cumsum(z * z)[:-1]
    total, total_sq = s1[-1] + z[-1], q1[-1] + z[-1] ** 2
    mean_l = s1 / k
    mean_r = (total - s1) / (n - k)
    ss = (q1 - s1 * mean_l) + ((total_sq - q1) - (total - s1) * mean_r)
    var = np.maximum(np.maximum(ss, 0.0) / max(n - 2, 1), noise * noise)
    se = np.sqrt(var * (1.0 / k + 1.0 / (n - k)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, (mean_r - mean_l) / se, 0.0)
    t[: max(left_min - 1, 0)] = 0.0
    t[n - edge :] = 0.0
    return t


def scan_p_value(t: float, n: int, df: int) -> float:
    """Two-sided p-value of the largest of ~n split statistics, corrected for the scan.

    Neighbouring splits share almost all their points, so the scan behaves like a few dozen
    independent tests, not n: the correction uses 2 * ln(n) effective tests (a Sidak bound), which
    the flat-series grid in bench/detection.py keeps at or below the nominal false-alarm rate.
    """
    single = 2.0 * float(stats.t.sf(abs(t), max(df, 1)))
    tests = max(2.0 * math.log(max(n, 2)), 1.0)
    return float(-math.expm1(tests * math.log1p(-min(single, 1.0 - 1e-16))))


def _segment(
    y: np.ndarray,
    clipped: np.ndarray,
    start: int,
    stop: int,
    noise: float,
    options: DetectionOptions,
    found: list[ChangePoint],
    smooth: bool = False,
) -> None:
    """Binary segmentation of y[start:stop]: split at the best significant point, then recurse.

    `smooth` (a series that moves smoothly): a split must also be significant once its t is shrunk
    for the serial correlation of its residuals, or else fit its stretch better than a hinge does.
    """
    n = stop - start
    if n < options.min_baseline + options.min_segment:
        return
    z = clipped[start:stop]
    t = split_scores(z, options.min_segment, options.min_baseline, noise)
    shrink = np.sqrt((1.0 - (rho := split_rho(z))) / (1.0 + rho)) if smooth else None
    hinge = hinge_rss(z) if smooth else math.inf
    order = np.argsort(-np.abs(t))
    for pos in order[:8]:  # the strongest split, or a close second when it is not a level change
        k = int(pos) + 1
        score = float(t[pos])
        if score == 0.0:
            return
        p = scan_p_value(score, n, n - 2)
        if p > options.alpha:
            return
        cut = start + k
        weak = shrink is not None and scan_p_value(score * float(shrink[pos]), n, n - 2) > options.alpha
        if weak and _two_levels_rss(z, k) >= hinge:
            continue  # not significant for a smooth series, and a line bending once fits as well
        change = _judge(y, clipped, start, cut, stop, noise, score, p, options)
        if change is _UNSETTLED:
            # The newest points may be a burst or a level: wait for more of them, but still look for
            # changes before them.
            _segment(y, clipped, start, cut, noise, options, found, smooth)
            return
        if isinstance(change, ChangePoint):
            found.append(change)
            _segment(y, clipped, start, cut, noise, options, found, smooth)
            _segment(y, clipped, cut, stop, noise, options, found, smooth)
            return


def _young_ramp(z: np.ndarray, cuts: list[int]) -> bool:
    """Whether the newest cut is better read as the start of a creep than as a step: a ramp that
    began RAMP_LEAD runs before it fits its stretch as well as a jump does (two levels, or a jump on
    a common slope, so that a step on top of a drift stays a step)."""
    start = cuts[-2] if len(cuts) > 1 else 0
    w = z[start:]
    k = cuts[-1] - start
    n = w.size
    t = np.arange(n, dtype=float) - (n - 1) / 2
    design = np.column_stack([np.ones(n), t, (np.arange(n) >= k).astype(float)])
    coef, *_ = np.linalg.lstsq(design, w, rcond=None)
    jump = min(_two_levels_rss(w, k), float(np.sum((w - design @ coef) ** 2)))
    return jump >= hinge_rss(w, min_ramp=n - k + RAMP_LEAD, ways=1)


def _two_levels_rss(z: np.ndarray, k: int) -> float:
    left, right = z[:k], z[k:]
    return float(((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum())


def _judge(
    y: np.ndarray,
    clipped: np.ndarray,
    start: int,
    cut: int,
    stop: int,
    noise: float,
    score: float,
    p: float,
    options: DetectionOptions,
) -> ChangePoint | object | None:
    """The split at `cut` as a change point; None when it is no level change; `_UNSETTLED` when the
    newest points after it cannot be told from a burst yet."""
    before = float(np.median(y[start:cut]))
    after = float(np.median(y[cut:stop]))
    if before == 0.0 or not math.isfinite(before):
        return None
    rel = after / before - 1.0
    if abs(rel) < options.min_effect or (rel > 0) != (score > 0):
        return None
    if stop == y.size and stop - cut < _BURST_CHECK_POINTS:
        # Noise grows with the level it is measured at; a spread under half the smallest change
        # worth reporting is a level whatever the noise was (a metric flat until now, like a size);
        # so is one under half the step itself, once it has lasted _SETTLED_POINTS runs: a quiet
        # series (a ratio to a frozen reference) that jumps to a level a little noisier than before
        # has still moved, while a burst decays by more than half its height within a few runs
        # (before that, a burst of three can look as flat as a level).
        allowed = max(2.0 * CLIP * noise * max(1.0, after / before), options.min_effect * abs(before) / 2)
        if stop - cut >= _SETTLED_POINTS:
            allowed = max(allowed, abs(after - before) / 2)
        if float(np.ptp(y[cut:stop])) > allowed:
            return _UNSETTLED
    if min(cut - start, stop - cut) >= _RANK_CHECK_POINTS:
        # Rank confirmation, blind to how wild any single reading is: the split must also hold for
        # the order of the values, not just for their means.
        alternative = "greater" if rel > 0 else "less"
        ranks = stats.mannwhitneyu(y[cut:stop], y[start:cut], alternative=alternative)
        if ranks.pvalue > _RANK_ALPHA:
            return None
        p = max(p, float(ranks.pvalue))
    return ChangePoint(
        index=cut,
        direction="up" if rel > 0 else "down",
        before=before,
        after=after,
        rel_change=rel,
        p_value=p,
        t_stat=score,
    )


def _reindex(change: ChangePoint, index: int) -> ChangePoint:
    return replace(change, index=index)


def in_effect(
    change: ChangePoint, points: Sequence[ChangePoint], values: np.ndarray, options: DetectionOptions
) -> bool:
    """Whether a change still holds: the newest level differs from the level before the change by
    at least the minimum effect, in the change's direction (a regression later undone does not)."""
    newest = values[points[-1].index :]
    current = float(np.median(newest[np.isfinite(newest)]))
    rel = current / change.before - 1.0 if change.before else 0.0
    return abs(rel) >= options.min_effect and (rel > 0) == (change.direction == "up")


def step_at(values: np.ndarray, index: int, stop: int, options: DetectionOptions) -> ChangePoint | None:
    """A shift at a point known in advance (where the environment changed), or None.

    A scan over every split pays for having looked everywhere; at a known point one two-sample test
    is enough, so a step is found in a series too noisy for the scan (a bimodal one, say). The level
    after is `values[index:stop]` (at least `min_segment` points), before it up to 50 points (at least
    `min_baseline`); a shift needs the minimum effect between their medians and a one-sided Mann-Whitney
    U p-value under `alpha`.
    """
    x = np.asarray(values, dtype=float)
    before, after = x[max(0, index - 50) : index], x[index:stop]
    before, after = before[np.isfinite(before)], after[np.isfinite(after)]
    if before.size < options.min_baseline or after.size < options.min_segment:
        return None
    old, new = float(np.median(before)), float(np.median(after))
    rel = new / old - 1.0 if old else 0.0
    if abs(rel) < options.min_effect:
        return None
    direction: Literal["up", "down"] = "up" if rel > 0 else "down"
    p = float(stats.mannwhitneyu(after, before, alternative="greater" if rel > 0 else "less").pvalue)
    if p >= options.alpha:
        return None
    return ChangePoint(index, direction, old, new, rel, p, float("nan"))
