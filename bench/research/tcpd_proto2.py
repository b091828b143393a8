"""Prototype 2: perfguard steps that a trend, a seasonal swing or a drift cannot fake, plus a drift test.

detect_changes(values, samples=None, options, cfg) -> list[ChangePoint] (steps only, perfguard's type).
detect_drift(values, options, cfg, steps=None) -> dict | None (newest segment's drift; keys in its doc).

Stages (defaults = the configuration reported; Config documents the knobs):
1. Candidates: proto.py's variant A (perfguard's Hampel clip, running-median noise floor, scan-corrected
   two-mean t, min_effect, min_segment/min_baseline, rank and burst checks; t shrunk for lag-1
   autocorrelation of residuals, "or" a step that beats a hinge). Burst check: cand burst="short" (the
   |after-before|/2 allowance of perfguard HEAD only once the newest level has >= 4 points).
2. Selection: backward elimination over the candidates on the standardised, clipped series; each
   segment is a line (model="linear": a trend is one segment); a candidate stays only if
   n_eff * log(RSS without / RSS with) >= pen * log(n), n_eff = n (1-rho)/(1+rho), rho the lag-1
   autocorrelation of the residuals of the current piecewise-linear fit (BIC with effective n).
3. Newest cut: dropped (repeatedly) while a hinge (flat then ramp, or ramp then flat; ramp at least
   points-after-cut + 3 long) fits its segment at least as well as a step (two means, or a jump on a
   common slope, so a step on a drift stays a step).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from monitor.detection.changepoints import DetectionOptions, hampel, neighbourhood_median, noise_scale  # noqa: E402
from monitor.detection.points import ChangePoint  # noqa: E402
import tcpd_proto_a as proto  # noqa: E402


@dataclass
class Config:
    cand: dict = field(default_factory=lambda: {"burst": "short"})   # proto.Config kwargs for the candidate stage
    prune: bool = True
    model: str = "linear"   # segment model of the selection stage: "const" or "linear"
    pen: float = 2.0       # penalty per change point, in units of log(n)
    neff: bool = True      # effective sample size n (1-rho)/(1+rho)
    crit: str = "loglik"   # "loglik": n_eff log(RSS ratio); "sigma": dRSS / sigma_lr^2
    drift: bool = False
    jump: float | None = None   # None: no jump test; else |t| of the level jump (own slopes) a step needs
    jump_short: int = 10        # a right segment shorter than this continues the left segment's slope
    jump_effect: bool = True    # the jump must also reach min_effect
    newest: bool = True        # the newest cut must fit its segment better than a hinge (a drift)
    ramp_extra: int = 3         # the hinge's ramp must be >= points after the cut + this
    hinge_factor: float = 1.0   # step RSS must be < hinge RSS * this
    drift_min_ramp: int = 5      # detect_drift: fewest drifting points
    drift_vs_step: bool = False  # detect_drift: the hinge must also beat the best single step
    step_slope: bool = True     # the step model may carry a common slope (a step on a drift)


class Sums:
    """Cumulative sums for O(1) RSS of a constant or linear fit on any segment [a, b)."""

    def __init__(self, z: np.ndarray):
        n = z.size
        t = np.arange(n, dtype=float) / max(n, 1)
        c = lambda v: np.concatenate([[0.0], np.cumsum(v)])
        self.n, self.s1, self.st, self.stt = n, c(np.ones(n)), c(t), c(t * t)
        self.sy, self.sty, self.syy = c(z), c(t * z), c(z * z)

    def rss(self, a, b, model):
        a = np.asarray(a); b = np.asarray(b)
        m = self.s1[b] - self.s1[a]
        sy = self.sy[b] - self.sy[a]; syy = self.syy[b] - self.syy[a]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = syy - np.where(m > 0, sy * sy / np.maximum(m, 1), 0.0)
            if model == "linear":
                st = self.st[b] - self.st[a]; stt = self.stt[b] - self.stt[a]; sty = self.sty[b] - self.sty[a]
                ctt = stt - np.where(m > 0, st * st / np.maximum(m, 1), 0.0)
                cty = sty - np.where(m > 0, st * sy / np.maximum(m, 1), 0.0)
                r = r - np.where((ctt > 1e-18) & (m > 2), cty * cty / np.where(ctt > 1e-18, ctt, 1.0), 0.0)
        return np.maximum(r, 0.0)


def residual_rho(z, cuts, model):
    bounds = [0, *cuts, z.size]
    r = np.empty_like(z); same = np.ones(max(z.size - 1, 0), dtype=bool)
    t = np.arange(z.size, dtype=float)
    for a, b in zip(bounds[:-1], bounds[1:]):
        seg = z[a:b]
        if model == "linear" and b - a > 2:
            tt = t[a:b] - t[a:b].mean(); coef = (tt @ seg) / (tt @ tt)
            r[a:b] = seg - seg.mean() - coef * tt
        else:
            r[a:b] = seg - seg.mean()
        if a > 0:
            same[a - 1] = False
    den = float(r @ r)
    if den <= 0:
        return 0.0, 0.0
    return float((r[1:] * r[:-1])[same].sum() / den), den


def prune(z, cuts, cfg: Config):
    """Backward elimination: drop the candidate whose removal costs least while that is under the penalty."""
    cuts = sorted(cuts)
    n = z.size
    if not cuts:
        return cuts
    S = Sums(z)
    pen = cfg.pen * math.log(n)
    while cuts:
        rho, rss_all = residual_rho(z, cuts, cfg.model)
        rho = min(max(rho, 0.0), 0.99) if cfg.neff else 0.0
        factor = (1 - rho) / (1 + rho)
        b = np.array([0, *cuts, n])
        left, mid, right = b[:-2], b[1:-1], b[2:]
        with_ = S.rss(left, mid, cfg.model) + S.rss(mid, right, cfg.model)
        without = S.rss(left, right, cfg.model)
        if cfg.crit == "loglik":
            gain = n * factor * np.log((rss_all + without - with_) / max(rss_all, 1e-300))
        else:
            sigma2 = rss_all / max(n - len(cuts) - 1, 1) / factor
            gain = (without - with_) / max(sigma2, 1e-300)
        j = int(np.argmin(gain))
        if gain[j] >= pen:
            break
        cuts.pop(j)
    return cuts


def _line(z, a, b):
    t = np.arange(a, b, dtype=float); m = b - a
    tb = t.mean(); zb = float(z[a:b].mean())
    if m < 3:
        return zb, 0.0, tb, m, 0.0, 0.0
    tc = t - tb; stt = float(tc @ tc); beta = float(tc @ z[a:b]) / stt
    r = z[a:b] - zb - beta * tc
    return zb, beta, tb, m, stt, float(r @ r)


def jumps(y, z, cuts, noise, options, cfg):
    """Keep the cuts whose level jump (lines on each side, evaluated at the cut) is significant."""
    rho, _ = residual_rho(z, cuts, "linear")
    rho = min(max(rho, 0.0), 0.99)
    infl = (1 + rho) / (1 - rho)
    b = [0, *cuts, z.size]
    out = []
    for i, c in enumerate(cuts):
        a, e = b[i], b[i + 2]
        zl, bl, tl, ml, sl, rl = _line(z, a, c)
        zr, br, tr, mr, sr, rr = _line(z, c, e)
        x0 = c - 0.5
        left = zl + bl * (x0 - tl)
        vl = 1 / ml + ((x0 - tl) ** 2 / sl if sl > 0 else 0.0)
        if mr < cfg.jump_short:
            # a short newest level: does it continue the line before it?
            right = zr - bl * (tr - x0)
            vr = 1 / mr
        else:
            right = zr + br * (x0 - tr)
            vr = 1 / mr + ((x0 - tr) ** 2 / sr if sr > 0 else 0.0)
        dof = max(ml + mr - 4, 1)
        var = max((rl + rr) / dof, noise * noise) * infl
        t = (right - left) / math.sqrt(var * (vl + vr))
        ok = abs(t) >= cfg.jump
        if ok and cfg.jump_effect:
            yl = float(np.median(y[a:c]))
            # jump in the series' units relative to the level before
            sc = (float(np.std(y[a:e])) or 1.0)
            ok = True  # min_effect is already checked on medians by the candidate stage
        if ok:
            out.append(c)
    return out


def _hinge_rss(w, min_ramp):
    """Smallest RSS of w ~ a + b * max(0, t - k) with a ramp of >= min_ramp points (t > k)."""
    n = w.size
    if min_ramp > n - 1:
        return math.inf
    ks, b, t, rss = proto.hinge_scores(w, 0.0, min_ramp)
    return float(rss.min()) if rss.size else math.inf


def drift_like(z, cuts, cfg):
    """Whether the newest cut is better explained by a drift (a hinge) in its segment than by a step."""
    c = cuts[-1]
    a = cuts[-2] if len(cuts) > 1 else 0
    w = z[a:]
    n = w.size
    k = c - a
    mr, ml = n - k, k
    left, right = w[:k], w[k:]
    rss_step = float(((left - left.mean()) ** 2).sum() + ((right - right.mean()) ** 2).sum())
    if cfg.step_slope and n > 3:
        tt = np.arange(n, dtype=float); tt -= tt.mean()
        X = np.column_stack([np.ones(n), tt, (np.arange(n) >= k).astype(float)])
        coef, *_ = np.linalg.lstsq(X, w, rcond=None)
        r = w - X @ coef
        rss_step = min(rss_step, float(r @ r))
    hinge = min(_hinge_rss(w, mr + cfg.ramp_extra), _hinge_rss(w[::-1], ml + cfg.ramp_extra))
    return rss_step >= hinge * cfg.hinge_factor


def detect_changes(values, samples=None, options: DetectionOptions = DetectionOptions(), cfg: Config | None = None):
    cfg = cfg or Config()
    pcfg = proto.Config(**{"drift": False, **cfg.cand})
    found = proto.detect_changes(values, options=options, cfg=pcfg)
    found = [f for f in found if f.kind == "step"]
    if cfg.prune and found:
        x = np.asarray(values, dtype=float); keep = np.flatnonzero(np.isfinite(x)); y = x[keep]
        centre = neighbourhood_median(y); noise = noise_scale(y, centre); z = hampel(y, noise, centre=centre)
        scale = float(np.std(z)) or 1.0
        z = (z - float(np.median(z))) / scale
        pos = {int(keep_i): i for i, keep_i in enumerate(keep)}
        cuts = [pos[f.index] for f in found]
        kept_cuts = prune(z, cuts, cfg)
        if cfg.jump is not None and kept_cuts:
            kept_cuts = jumps(y, z, kept_cuts, noise / scale, options, cfg)
        if cfg.newest:
            while kept_cuts and drift_like(z, kept_cuts, cfg):
                kept_cuts = kept_cuts[:-1]
        kept = set(int(keep[c]) for c in kept_cuts)
        found = [f for f in found if f.index in kept]
    return [ChangePoint(f.index, f.direction, f.before, f.after, f.rel_change, f.p_value, f.t_stat) for f in found]


def detect_drift(values, options: DetectionOptions = DetectionOptions(), cfg: Config | None = None,
                 steps=None):
    """A slow drift of the newest segment (after the newest step), or None.

    Returns {"start": index of the first drifting point (in `values`), "direction": "up"/"down",
    "slope": change per point (series units), "rel_change": total change start..newest relative to
    the level before the drift, "before", "after", "p_value": scan- and autocorrelation-corrected
    p-value of the hinge slope}. Reported only when |rel_change| >= options.min_effect.
    """
    cfg = cfg or Config()
    x = np.asarray(values, dtype=float); keep = np.flatnonzero(np.isfinite(x)); y = x[keep]
    if y.size < options.min_baseline + options.min_segment:
        return None
    if steps is None:
        steps = detect_changes(values, options=options, cfg=cfg)
    start = int(np.searchsorted(keep, steps[-1].index)) if steps else 0
    centre = neighbourhood_median(y); noise = noise_scale(y, centre); z = hampel(y, noise, centre=centre)
    pcfg = proto.Config(**{"drift_vs_step": cfg.drift_vs_step, **cfg.cand})
    d = proto._drift(y, z, start, noise, replace(options, min_segment=max(options.min_segment, cfg.drift_min_ramp)),
                     pcfg)
    if d is None:
        return None
    return {"start": int(keep[d.index]) if d.index < keep.size else int(keep[-1]), "direction": d.direction,
            "slope": d.slope, "rel_change": d.rel_change, "before": d.before, "after": d.after,
            "p_value": d.p_value}
