"""Serial correlation of a series around a split, for the step search on smooth series.

A t statistic assumes the points around each level are independent. On a series that moves smoothly
(a trend, a seasonal swing) the residuals around two means come in long runs of one sign, each point
carrying little news, and the statistic overstates the evidence. `split_rho` gives, for every split
at once (cumulative sums), the lag-1 autocorrelation of the residuals around the two means; the
search shrinks its t by sqrt((1 - rho) / (1 + rho)), the variance factor of an AR(1) mean.
`hinge_rss` is the other way to tell a smooth movement from a step: the residual sum of squares of
the best hinge (flat, then a line; or a line, then flat), which a step must beat.
"""

from __future__ import annotations

import math

import numpy as np


def split_rho(z: np.ndarray) -> np.ndarray:
    """Element k-1: the lag-1 autocorrelation of the residuals of z[:k] and z[k:] around their own
    means (pairs within one side only), clipped to [0, 0.999]."""
    n = z.size
    z = z - z.mean()
    ks = np.arange(1, n)

    def cum(v: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(v)])

    s, ss, lag = cum(z), cum(z * z), np.concatenate([[0.0, 0.0], np.cumsum(z[1:] * z[:-1])])

    def side(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = (hi - lo).astype(float)
        total = s[hi] - s[lo]
        mean = total / np.maximum(count, 1.0)
        spread = ss[hi] - ss[lo] - count * mean * mean
        pairs = lag[hi] - lag[np.minimum(lo + 1, hi)]  # products z_t z_{t-1} for lo < t < hi
        ends = z[lo] + z[hi - 1]
        around = pairs - mean * (2 * total - ends) + np.maximum(count - 1, 0) * mean * mean
        return spread, around

    spread_l, around_l = side(np.zeros(n - 1, dtype=int), ks)
    spread_r, around_r = side(ks, np.full(n - 1, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(spread_l + spread_r > 0, (around_l + around_r) / (spread_l + spread_r), 0.0)
    return np.asarray(np.clip(rho, 0.0, 0.999), dtype=float)


def hinge_rss(z: np.ndarray, min_ramp: int = 2, ways: int = 2) -> float:
    """Smallest residual sum of squares of a hinge over z, either way round (a line that starts at
    some point after a flat stretch, or ends before one; a straight line is the hinge at 0), with a
    ramp of `min_ramp` points at least; `ways=1`: only a line starting after a flat stretch."""
    fits = [hinge_fit(w, min_ramp) for w in (z, z[::-1])[:ways]]
    return min((fit[0] for fit in fits if fit is not None), default=math.inf)


def hinge_fit(z: np.ndarray, min_ramp: int = 2) -> tuple[float, float, float, int] | None:
    """The least-squares hinge z_i = a + b * max(0, i - k) over every start k that leaves at least
    `min_ramp` points on the ramp after it: (its residual sum of squares, b, a, k) for the best k,
    all k at once with cumulative sums; None when z is too short for one."""
    n = z.size
    if n < max(4, min_ramp + 2):
        return None
    w = z - z.mean()
    t = np.arange(n, dtype=float)
    ks = np.arange(0, n - max(min_ramp, 2))
    length = (n - 1 - ks).astype(float)  # points after k, at distance 1..length
    sx = length * (length + 1) / 2
    sxx = length * (length + 1) * (2 * length + 1) / 6
    rev_tw = np.concatenate([np.cumsum((t * w)[::-1])[::-1], [0.0]])
    rev_w = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
    sxw = rev_tw[ks + 1] - ks * rev_w[ks + 1]
    centred = sxx - sx * sx / n
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(centred > 0, sxw / centred, 0.0)
    best = int(np.argmax(slope * sxw))  # the gain in fit: sxw^2 / centred
    level = float(z.mean()) - float(slope[best] * sx[best]) / n
    rss = max(float(w @ w) - float(slope[best] * sxw[best]), 0.0)
    return rss, float(slope[best]), level, int(ks[best])
