"""Prototype change-point detector for perfguard issue 16: steps that a trend cannot fake, plus drift.

Same entry point as monitor.detection.changepoints: detect_changes(values, samples=None, options)
-> list[ChangePoint]. Steps are ChangePoint-compatible records (kind="step"); a drift is one record
with kind="drift", index = where the drift starts, slope per point and total change.

Pieces (see the report in the session for measurements):
1. Hampel clipping around a 7-point running median (perfguard's, unchanged): outliers have bounded
   weight.
2. Step test = binary segmentation over every split at once (cumulative sums), but each split is
   scored in a model that also allows a common linear slope in the segment (level-shift-on-a-trend,
   Frisch-Waugh with cumsums): a straight trend explains itself and never reads as a step, while a
   step on top of a drift is still a step.
3. Noise: the pooled residual spread of that model, floored by perfguard's running-median noise, and
   inflated for serial correlation of the residuals (lag-1 autocorrelation rho, variance factor
   (1+rho)/(1-rho)): a curved trend or a seasonal swing leaves long runs of same-signed residuals,
   which is what distinguishes it from a step in independent noise. Scan-corrected p-value as before.
4. perfguard's filters kept: min_effect on the medians (a step must move the level), min_segment /
   min_baseline, rank confirmation for long sides, the burst check of a short newest segment.
5. Drift: in the newest segment, a hinge (flat, then linear from k) scanned over k with cumsums; a
   significant slope (scan-corrected, same autocorrelation inflation) whose total change reaches
   min_effect is one drift finding, not a staircase of steps.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

from monitor.detection.changepoints import (  # noqa: E402
    CLIP,
    DetectionOptions,
    hampel,
    neighbourhood_median,
    noise_scale,
    scan_p_value,
)
from monitor.detection.scipy_stats import stats  # noqa: E402

_BURST_CHECK_POINTS = 10
_RANK_CHECK_POINTS = 6
_RANK_ALPHA = 0.001
_UNSETTLED = object()


@dataclass(frozen=True, slots=True)
class Finding:
    """A ChangePoint with a kind. Step: `index` first point of the new level. Drift: `index` first
    point of the drift, `slope` per point, `total` the change from start to newest point."""

    index: int
    direction: str
    before: float
    after: float
    rel_change: float
    p_value: float
    t_stat: float
    kind: str = "step"
    slope: float = 0.0
    total: float = 0.0
    samples_p_value: float | None = None
    samples_interval: tuple[float, float] | None = None


@dataclass
class Config:
    slope: bool = False  # level shift on a common slope (False: two flat means, as perfguard)
    ar: bool = True  # inflate for lag-1 autocorrelation of residuals
    ar_cap: float = 0.999
    drift: bool = True
    drift_alpha: float | None = None  # default options.alpha
    rank: bool = True
    rho_mode: str = "split"  # "split": per-split residuals; "global": residuals of a fine first pass
    rho_dead: float = 0.0  # subtract this many 1/sqrt(n) from rho before using it
    rho_fixed: float | None = None  # internal: the global rho of the second pass
    hinge_check: bool = True  # a step must fit its segment better than a hinge (drift) does
    hinge_factor: float = 1.0  # step RSS must be below hinge RSS * this
    newest_hinge: bool = False  # the newest segment must beat the hinge whatever combine says
    drift_vs_step: bool = True  # a drift only where the hinge beats the best single step
    combine: str = "or"  # "or": a split passes if AR-corrected t is significant OR the step beats the hinge
    extra: dict = field(default_factory=dict)
    burst: str = "new"  # "new": perfguard HEAD's burst check; "old": 43b3c8b's (2*CLIP*noise only);
    # "short": HEAD's, but the |after-before|/2 allowance only once the newest level has >= 4 points


CONFIG = Config()


def _lag1_sums(z: np.ndarray):
    """Cumulative sums for the lag-1 products inside each side of a split."""
    p = np.concatenate([[0.0], np.cumsum(z[1:] * z[:-1])])  # p[j] = sum_{t=1..j} z_t z_{t-1}
    return p


def split_scores_slope(z: np.ndarray, edge: int, left_min: int, noise: float, cfg: Config):
    """t statistic of a level shift at every split k (z[:k] | z[k:]), on a common linear slope.

    Returns (t, rho): rho is the lag-1 autocorrelation of the fitted residuals per split.
    """
    n = z.size
    z = z - z.mean()
    tt = np.arange(n, dtype=float)
    tc = tt - tt.mean()
    ks = np.arange(1, n)  # split: first point of the right side
    # right-side sums: m = n - k points, S_t = sum_{t>=k} tc
    m = (n - ks).astype(float)
    rev_t = np.cumsum(tc[::-1])[::-1]  # rev_t[k] = sum_{t>=k} tc_t
    rev_z = np.cumsum(z[::-1])[::-1]
    St = rev_t[ks]
    Sz = rev_z[ks]
    Stt = float(tc @ tc)
    if cfg.slope:
        b0 = float(tc @ z) / Stt
        ez = z - b0 * tc  # residual of z on [1, t]
        # residualised indicator norm: m - m^2/n - St^2/Stt ; <e_s, e_z> = sum_{t>=k} ez
        ss_s = m - m * m / n - St * St / Stt
        rev_ez = np.cumsum(ez[::-1])[::-1]
        sz = rev_ez[ks]
        rss0 = float(ez @ ez)
        p_params = 3
    else:
        ss_s = m - m * m / n
        sz = Sz
        rss0 = float(z @ z)
        b0 = 0.0
        p_params = 2
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(ss_s > 1e-12, sz / ss_s, 0.0)
        rss = np.maximum(rss0 - d * d * ss_s, 0.0)
    var = np.maximum(rss / max(n - p_params, 1), noise * noise)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(ss_s > 1e-12, d / np.sqrt(var / ss_s), 0.0)
    rho = np.zeros_like(t)
    if cfg.ar:
        # Residuals r_t = z_t - a - b t - d_k s_k(t). For speed, the slope b is taken from the
        # no-step fit adjusted by the step's projection; the intercepts on each side follow exactly
        # (left: a, right: a + d). We compute rho of the residuals of two-mean-adjusted detrended data:
        # w = z - b_k t with b_k = b0 - d_k * St/Stt (Frisch-Waugh slope), then per side demean.
        bk = b0 - d * St / Stt if cfg.slope else np.zeros_like(d)
        # lag-1 sum of residuals: sum over adjacent pairs in the same side of (w_t - mu)(w_{t-1} - mu)
        # w_t = z_t - bk tc_t. Need sums of z_t z_{t-1}, z_t tc_{t-1}+z_{t-1} tc_t, tc_t tc_{t-1} per side.
        zz = _lag1_sums(z)
        zt = np.concatenate([[0.0], np.cumsum(z[1:] * tc[:-1] + z[:-1] * tc[1:])])
        ttl = np.concatenate([[0.0], np.cumsum(tc[1:] * tc[:-1])])
        cz = np.concatenate([[0.0], np.cumsum(z)])
        ct = np.concatenate([[0.0], np.cumsum(tc)])
        czz = np.concatenate([[0.0], np.cumsum(z * z)])
        czt = np.concatenate([[0.0], np.cumsum(z * tc)])
        ctt = np.concatenate([[0.0], np.cumsum(tc * tc)])

        def side(lo, hi):  # arrays of indices [lo, hi)
            cnt = (hi - lo).astype(float)
            sw = (cz[hi] - cz[lo]) - bk * (ct[hi] - ct[lo])
            sww = (czz[hi] - czz[lo]) - 2 * bk * (czt[hi] - czt[lo]) + bk * bk * (ctt[hi] - ctt[lo])
            mu = np.where(cnt > 0, sw / np.maximum(cnt, 1), 0.0)
            ss = sww - cnt * mu * mu
            # pairs (t, t-1) with lo+1 <= t <= hi-1: lag sums index by t -> cumsum index t (p[t])
            a = np.minimum(lo, hi - 1)
            bzz = zz[hi - 1] - zz[a]
            bzt = zt[hi - 1] - zt[a]
            btt = ttl[hi - 1] - ttl[a]
            ww = bzz - bk * bzt + bk * bk * btt
            # sum w_t + w_{t-1} over the pairs = 2 sw - w_lo - w_{hi-1}
            w_lo = z[lo] - bk * tc[lo]
            w_hi = z[hi - 1] - bk * tc[hi - 1]
            pairsum = 2 * sw - w_lo - w_hi
            lag = ww - mu * pairsum + np.maximum(cnt - 1, 0) * mu * mu
            return ss, lag

        zeros = np.zeros(n - 1, dtype=int)
        ss_l, lag_l = side(zeros, ks)
        ss_r, lag_r = side(ks, np.full(n - 1, n))
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(ss_l + ss_r > 0, (lag_l + lag_r) / (ss_l + ss_r), 0.0)
        rho = np.clip(rho, 0.0, cfg.ar_cap)
        t = t * np.sqrt((1 - rho) / (1 + rho))
    elif cfg.rho_fixed is not None:
        rho = np.full_like(t, cfg.rho_fixed)
        t = t * math.sqrt((1 - cfg.rho_fixed) / (1 + cfg.rho_fixed))
    t[: max(left_min - 1, 0)] = 0.0
    t[n - edge:] = 0.0
    return t, rho


def detect_changes(values, samples=None, options: DetectionOptions = DetectionOptions(), cfg: Config | None = None):
    cfg = cfg or CONFIG
    x = np.asarray(values, dtype=float)
    keep = np.flatnonzero(np.isfinite(x))
    y = x[keep]
    if y.size < options.min_baseline + options.min_segment:
        return []
    centre = neighbourhood_median(y)
    noise = noise_scale(y, centre)
    clipped = hampel(y, noise, centre=centre)
    found: list[Finding] = []
    if cfg.ar and cfg.rho_mode == "global":
        fine_cfg = replace(cfg, ar=False, rho_fixed=None)
        _segment(y, clipped, 0, y.size, noise, options, found, fine_cfg)
        rho = residual_rho(clipped, sorted(c.index for c in found))
        rho = min(max(rho - cfg.rho_dead / math.sqrt(y.size), 0.0), cfg.ar_cap)
        cfg = replace(cfg, ar=False, rho_fixed=rho)
        found = []
    _segment(y, clipped, 0, y.size, noise, options, found, cfg)
    found.sort(key=lambda c: c.index)
    if cfg.drift:
        start = found[-1].index if found else 0
        d = _drift(y, clipped, start, noise, options, cfg)
        if d is not None:
            found.append(d)
    return [_reindex(c, int(keep[c.index])) for c in found]


def residual_rho(z: np.ndarray, cuts: list[int]) -> float:
    """Lag-1 autocorrelation of residuals around the segment means (pairs inside one segment)."""
    bounds = [0, *cuts, z.size]
    r = np.empty_like(z)
    same = np.ones(z.size - 1, dtype=bool)
    for a, b in zip(bounds[:-1], bounds[1:]):
        r[a:b] = z[a:b] - z[a:b].mean()
        if a > 0:
            same[a - 1] = False
    den = float(r @ r)
    if den <= 0:
        return 0.0
    return float((r[1:] * r[:-1])[same].sum() / den)


def _reindex(c: Finding, index: int) -> Finding:
    from dataclasses import replace

    return replace(c, index=index)


def _segment(y, clipped, start, stop, noise, options, found, cfg):
    n = stop - start
    if n < options.min_baseline + options.min_segment:
        return
    t, rho = split_scores_slope(clipped[start:stop], options.min_segment, options.min_baseline, noise, cfg)
    if cfg.combine == "or":
        t_raw = t / np.sqrt((1 - rho) / (1 + rho))
        order = np.argsort(-np.abs(t_raw))
    else:
        order = np.argsort(-np.abs(t))
    hinge = hinge_min_rss(clipped[start:stop]) if cfg.hinge_check else math.inf
    for pos in order[:8]:
        k = int(pos) + 1
        score = float(t[pos])
        cut = start + k
        if cfg.combine == "or":
            raw = float(t_raw[pos])
            if raw == 0.0 or scan_p_value(raw, n, n - 3) > options.alpha:
                return
            p = scan_p_value(score, n, n - 3)
            if cfg.newest_hinge and stop == y.size:
                left, right = clipped[start:cut], clipped[cut:stop]
                rss_step = float(((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum())
                if rss_step >= hinge * cfg.hinge_factor:
                    continue
            if p > options.alpha:
                left, right = clipped[start:cut], clipped[cut:stop]
                rss_step = float(((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum())
                if rss_step >= hinge * cfg.hinge_factor:
                    continue
                score, p = raw, scan_p_value(raw, n, n - 3)
        else:
            if score == 0.0:
                return
            p = scan_p_value(score, n, n - 3)
            if p > options.alpha:
                return
            if cfg.hinge_check:
                left, right = clipped[start:cut], clipped[cut:stop]
                rss_step = float(((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum())
                if rss_step >= hinge * cfg.hinge_factor:
                    continue  # a drift (or a trend) explains this segment at least as well as a step
        change = _judge(y, clipped, start, cut, stop, noise, score, p, options, cfg)
        if change is _UNSETTLED:
            _segment(y, clipped, start, cut, noise, options, found, cfg)
            return
        if isinstance(change, Finding):
            found.append(change)
            _segment(y, clipped, start, cut, noise, options, found, cfg)
            _segment(y, clipped, cut, stop, noise, options, found, cfg)
            return


def _judge(y, clipped, start, cut, stop, noise, score, p, options, cfg):
    before = float(np.median(y[start:cut]))
    after = float(np.median(y[cut:stop]))
    if before == 0.0 or not math.isfinite(before):
        return None
    rel = after / before - 1.0
    if abs(rel) < options.min_effect or (rel > 0) != (score > 0):
        return None
    if stop == y.size and stop - cut < _BURST_CHECK_POINTS:
        if cfg.burst == "old":
            allowed = 2.0 * CLIP * noise * max(1.0, after / before)
        else:
            allowed = max(2.0 * CLIP * noise * max(1.0, after / before), options.min_effect * abs(before) / 2,
                          abs(after - before) / 2 if (cfg.burst == "new" or stop - cut >= 4) else 0.0)
        if float(np.ptp(y[cut:stop])) > allowed:
            return _UNSETTLED
    if cfg.rank and min(cut - start, stop - cut) >= _RANK_CHECK_POINTS:
        alternative = "greater" if rel > 0 else "less"
        ranks = stats.mannwhitneyu(y[cut:stop], y[start:cut], alternative=alternative)
        if ranks.pvalue > _RANK_ALPHA:
            return None
        p = max(p, float(ranks.pvalue))
    return Finding(cut, "up" if rel > 0 else "down", before, after, rel, p, score)


def hinge_scores(z: np.ndarray, noise: float, min_after: int):
    """Slope t statistic of z ~ a + b * max(0, t - k) for every k (drift starting after point k)."""
    n = z.size
    z = z - z.mean()
    tt = np.arange(n, dtype=float)
    ks = np.arange(0, n - min_after)
    L = (n - 1 - ks).astype(float)  # points with x > 0: t = k+1..n-1, x = 1..L
    sx = L * (L + 1) / 2
    sxx = L * (L + 1) * (2 * L + 1) / 6
    rev_tz = np.concatenate([np.cumsum((tt * z)[::-1])[::-1], [0.0]])
    rev_z = np.concatenate([np.cumsum(z[::-1])[::-1], [0.0]])
    sxz = (rev_tz[ks + 1] - ks * rev_z[ks + 1])  # sum_{t>k} (t-k) z_t  (z centred, so no mean term)
    sxx_c = sxx - sx * sx / n
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(sxx_c > 0, sxz / sxx_c, 0.0)
        rss = np.maximum(float(z @ z) - b * b * sxx_c, 0.0)
        var = np.maximum(rss / max(n - 3, 1), noise * noise)
        t = np.where(sxx_c > 0, b / np.sqrt(var / sxx_c), 0.0)
    return ks, b, t, rss


def hinge_min_rss(z: np.ndarray) -> float:
    """Smallest residual sum of squares of a hinge fit, either way round (drift starting at some k,
    or drift ending at some k; k = 0 is a straight line)."""
    best = math.inf
    for w in (z, z[::-1]):
        _, _, _, rss = hinge_scores(w, 0.0, 2)
        if rss.size:
            best = min(best, float(rss.min()))
    return best


def _drift(y, clipped, start, noise, options, cfg):
    """One drift finding in the newest segment y[start:], or None."""
    z = clipped[start:]
    n = z.size
    if n < options.min_baseline + options.min_segment:
        return None
    ks, b, t, rss_h = hinge_scores(z, noise, max(options.min_segment, 5))
    j = int(np.argmax(np.abs(t)))
    if cfg.drift_vs_step:
        zc = z - z.mean()
        k_ = np.arange(1, n)
        s1 = np.cumsum(zc)[:-1]
        rss_steps = float(zc @ zc) - s1 * s1 * n / (k_ * (n - k_))
        if float(rss_h[j]) >= float(rss_steps.min()):
            return None
    k, slope, score = int(ks[j]), float(b[j]), float(t[j])
    # residual autocorrelation at the chosen hinge
    tt = np.arange(n, dtype=float)
    x = np.maximum(0.0, tt - k)
    A = np.column_stack([np.ones(n), x])
    coef, *_ = np.linalg.lstsq(A, z, rcond=None)
    r = z - A @ coef
    den = float(r @ r)
    rho = float(np.clip((r[1:] @ r[:-1]) / den, 0.0, cfg.ar_cap)) if den > 0 else 0.0
    if cfg.ar:
        score *= math.sqrt((1 - rho) / (1 + rho))
    alpha = cfg.drift_alpha if cfg.drift_alpha is not None else options.alpha
    p = scan_p_value(score, n, n - 3)
    if p > alpha:
        return None
    level = float(np.median(y[start: start + k + 1])) if k >= 0 else float(np.median(y[start:]))
    if level == 0.0 or not math.isfinite(level):
        return None
    total = slope * (n - 1 - k)
    rel = total / abs(level)
    if abs(rel) < options.min_effect:
        return None
    first = start + k + 1  # first drifting point
    return Finding(first, "up" if slope > 0 else "down", level, level + total, rel, p, score,
                   kind="drift", slope=slope, total=total)
