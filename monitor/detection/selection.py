"""Which of the step search's change points a series really supports: a penalised model selection.

The step search (changepoints.py) asks of each split "is this significant against the noise?", with
the noise read from the spread around a running median. On a series that moves smoothly (a trend, a
seasonal swing, a random walk) that spread is tiny, so every stretch of the movement passes as a
step. This stage asks instead whether the series needs the point at all:

- each stretch between change points is fitted as a line, so a trend is one stretch, not stairs;
- points are removed one at a time, the one whose removal costs least first, while the cost stays
  under a BIC-like penalty: n_eff * log(RSS without / RSS with) < PENALTY * log(n);
- n_eff = n (1 - rho) / (1 + rho), rho the lag-1 autocorrelation of the current fit's residuals: on
  a smooth series the residuals are strongly correlated and each point carries little news, so the
  penalty bites. On a benchmark series (independent noise around the step search's levels: the
  residuals around those levels correlate under MIN_RHO) nothing is removed: the search's
  scan-corrected tests already answer for it, and a line per stretch would take a young step's first
  runs for a slope. A trend cut into stairs leaves sawtooth residuals around the stairs, which do
  correlate.

Measured on the TCPD benchmark and the synthetic grid (bench/tcpd.py, bench/detection.py;
bench/RESULTS.md).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

PENALTY = 2.0  # per change point, in units of log(n)
MAX_RHO = 0.99
MIN_RHO = 0.2  # residual autocorrelation below which the series is read as levels in noise


class _Sums:
    """Cumulative sums giving the residual sum of squares of a line fitted to any stretch in O(1)."""

    def __init__(self, z: np.ndarray):
        t = np.arange(z.size, dtype=float) / max(z.size, 1)

        def cum(v: np.ndarray) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(v)])

        self.count, self.t, self.tt = cum(np.ones(z.size)), cum(t), cum(t * t)
        self.y, self.ty, self.yy = cum(z), cum(t * z), cum(z * z)

    def line_rss(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """RSS of the least-squares line over z[a:b], for arrays of stretches."""
        m = self.count[b] - self.count[a]
        safe = np.maximum(m, 1.0)
        sy, syy = self.y[b] - self.y[a], self.yy[b] - self.yy[a]
        st, stt, sty = self.t[b] - self.t[a], self.tt[b] - self.tt[a], self.ty[b] - self.ty[a]
        centred_tt = stt - st * st / safe
        centred_ty = sty - st * sy / safe
        rss = syy - sy * sy / safe
        fits_line = (centred_tt > 1e-18) & (m > 2)
        rss = rss - np.where(fits_line, centred_ty**2 / np.where(fits_line, centred_tt, 1.0), 0.0)
        return np.asarray(np.maximum(rss, 0.0), dtype=float)


def select(z: np.ndarray, cuts: list[int]) -> list[int]:
    """The cuts (indices into z, each the first point of a new stretch) that the series supports.

    `z` should be the series with outliers clipped; its scale does not matter.
    """
    cuts = sorted(cuts)
    n = z.size
    if not cuts or n < 4:
        return cuts
    z = (z - float(np.median(z))) / (float(np.std(z)) or 1.0)
    if level_correlation(z, cuts) < MIN_RHO:
        return cuts  # independent noise around the levels: the step search's tests already hold
    sums = _Sums(z)
    penalty = PENALTY * math.log(n)
    while cuts:
        rho, rss_all = _residual_rho(z, cuts)
        rho = min(max(rho, 0.0), MAX_RHO)
        n_eff = n * (1.0 - rho) / (1.0 + rho)
        edges = np.array([0, *cuts, n])
        left, mid, right = edges[:-2], edges[1:-1], edges[2:]
        kept = sums.line_rss(left, mid) + sums.line_rss(mid, right)
        merged = sums.line_rss(left, right)
        gain = n_eff * np.log((rss_all + merged - kept) / max(rss_all, 1e-300))
        weakest = int(np.argmin(gain))
        if gain[weakest] >= penalty:
            break
        cuts.pop(weakest)
    return cuts


def level_correlation(z: np.ndarray, cuts: list[int]) -> float:
    """Lag-1 autocorrelation of the residuals around one level per stretch between the cuts: near
    0 for levels in independent noise, high for a smooth movement cut into stairs."""
    return _residual_rho(np.asarray(z, dtype=float), sorted(cuts), lines=False)[0]


def _residual_rho(z: np.ndarray, cuts: list[int], lines: bool = True) -> tuple[float, float]:
    """Lag-1 autocorrelation of the residuals of a line (or, without `lines`, a level) per stretch
    (pairs within a stretch only), and their sum of squares."""
    edges = [0, *cuts, z.size]
    residual = np.empty_like(z)
    within = np.ones(max(z.size - 1, 0), dtype=bool)
    t = np.arange(z.size, dtype=float)
    for a, b in itertools.pairwise(edges):
        part = z[a:b]
        if lines and b - a > 2:
            tc = t[a:b] - t[a:b].mean()
            residual[a:b] = part - part.mean() - (tc @ part) / (tc @ tc) * tc
        else:
            residual[a:b] = part - part.mean()
        if a > 0:
            within[a - 1] = False
    total = float(residual @ residual)
    if total <= 0.0:
        return 0.0, 0.0
    return float((residual[1:] * residual[:-1])[within].sum() / total), total
