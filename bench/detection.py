"""Online change-point detection benchmark: perfguard against Apache Otava and a naive threshold rule.

Every detector sees exactly the same seeded synthetic series, one point at a time, the way the
monitor sees a benchmark's history grow.

    .venv/bin/python bench/detection.py                 # full grid, 20 series per cell
    .venv/bin/python bench/detection.py --series 4 --json /tmp/detection.json
    .venv/bin/python bench/detection.py --perf          # offline speed check of detect_changes

Series
------
Cells are noise family x noise CV x step. The level is 10.0 (say ms); a point is
``level_i * (1 + cv * z_i)`` with ``z_i`` standard normal, times a family factor:

* ``gauss``: no factor.
* ``outliers``: about 3 % of the points are multiplied by a factor drawn from U(1.3, 3) (upward
  only). Outliers come in bursts that start with probability 2.3 % at each point and are 1 point
  long (80 %) or 2-3 points long (20 %). Because the evaluation is online, every outlier is at
  some time the newest point of the series.
* ``bimodal``: each point comes from a second mode at +8 % of the level with probability 0.3.

CVs are 1 %, 2 % and 5 %. The steps are +2 %, +5 %, +10 %, +20 % and -10 % (an improvement). A step
series has 120 points and a change index ``c`` drawn uniformly from [50, 80]: ``values[c]`` is the
first shifted point. There are two control cells. ``flat`` (200 points, no change) measures false
positives. ``drift`` (120 points) has the level rising linearly by 0.2 % of the base level per
run from ``c = 60`` to the end, so point ``c + k`` is ``(k + 1) * 0.2 %`` higher. A drift is not a
step, so it is reported separately. Each series has its own generator,
``default_rng([seed, crc32(cell key), series number])``. Because of that, series *k* of a cell is
the same whatever ``--series`` is, and the same for every detector.

Online protocol
---------------
The first 10 points are a warm-up. After each later point ``t`` (``t = 10 .. n-1``), a change-point
detector is run on ``values[:t+1]``. Each change point it reports (an index plus a direction) is
matched against the alarms already raised on that series. It is the *same* alarm when an earlier
alarm has the same direction and an index within +-5. Otherwise it is a *new alarm*, raised at
time ``t`` with the reported index. Detectors re-report the same change at later times and move
its index by a few points; this matching stops those repeats from counting again. The naive rule
has no index: its alarm index is its time ``t``.

* **True positive** (step series): the first alarm, in time order, that is raised at ``t >= c``,
  has the step's direction and has ``|index - c| <= 5``. For the naive rule, since its index is
  ``t``, the last condition becomes ``c <= t <= c + 10``.
* **Detection delay** of a true positive: ``t - c``. When the shifted point ``values[c]`` alone
  is enough, the delay is 0.
* **False positive**: every other alarm. That includes alarms before the change, in the wrong
  direction, too far from ``c``, and second alarms for the same step.
* Per cell: recall = series with a TP / series; precision = TP / (TP + FP) (undefined, printed
  "-", when a detector raised no alarm); F1 = 2PR / (P + R), or 0 when either is 0 or undefined.
  FP/1000 = 1000 * FP / monitored points, where monitored points are the points after the
  warm-up (``n - 10`` per series).
* **Drift**: a *hit* is the first "up" alarm raised at ``t >= c`` whose index is ``>= c - 5``.
  For the naive rule, ``t >= c`` is enough. Its delay is ``t - c``, and at that point the level
  has drifted ``(t - c + 1) * 0.2 %``. All other alarms are reported as "other alarms per 1000
  points". They include re-alarms as the level keeps drifting away from an earlier change point.

Detectors
---------
* ``perfguard``: what the service runs on a series: ``monitor.detection.changepoints.detect_changes(
  values, options=DetectionOptions(min_effect=0.015))``, then ``monitor.detection.drift.fold_drift``
  over its steps (a creep becomes one drift; the stairs the step search cut it into are folded in).
  A drift is an alarm of its own kind, counted once per series whatever its start index moves to.
  The minimum effect is just under the smallest step (``--min-effect``, ``--alpha``).
* ``otava``: Apache Otava (``pip install --no-deps apache-otava==0.8.0``; see ``--help``). It runs
  through its library entry point, ``otava.series.Series(...).analyze(AnalysisOptions())``, which
  is what ``otava analyze`` calls. The options are Otava's defaults, untuned: window_len=50,
  max_pvalue=0.001, min_magnitude=0.0, orig_edivisive=False (the windowed E-divisive split with a
  t-test merge). The timestamps are synthetic and increase (0, 1, 2, ...). A change's direction
  is the sign of its forward relative change.
* ``naive``: "the mean of the last 5 runs is above a threshold". The baseline is the mean of the
  first 20 points, a training prefix. From ``t = 20`` on, an "up" alarm is raised when the rolling
  mean of ``values[t-4:t+1]`` rises above ``baseline * 1.05``. The mirrored "down" rule (below
  ``baseline * 0.95``) runs too. Each rule raises one alarm per excursion: an alarm comes when
  its condition becomes true after being false. Both rules run on every series, as the other two
  detectors also look both ways.

Each detector is evaluated on its own, one after the other, across at most 2 processes. The wall
time printed per detector is that detector's evaluation over all series. ``--perf`` times single
offline ``detect_changes`` calls: 100 series x 10,000 points, gauss CV 2 %, 2-3 steps each. The
target is <= 2 s in total.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from monitor.core.series import STAIR_SLACK_RUNS
from monitor.detection.changepoints import DetectionOptions, detect_changes
from monitor.detection.drift import fold_drift

Array = npt.NDArray[np.float64]
Direction = Literal["up", "down"]
Finder = Callable[[Array], list[tuple[int, Direction, str]]]  # (index, direction, step | drift)

# --- series grid ---------------------------------------------------------------------------------
LEVEL = 10.0
FAMILIES = ("gauss", "outliers", "bimodal")
CVS = (0.01, 0.02, 0.05)
STEPS: dict[str, float] = {"+2%": 0.02, "+5%": 0.05, "+10%": 0.10, "+20%": 0.20, "-10%": -0.10}
STEP_LENGTH = 120
FLAT_LENGTH = 200
CHANGE_RANGE = (50, 80)  # inclusive
DRIFT_START = STEP_LENGTH // 2
DRIFT_PER_RUN = 0.002
OUTLIER_BURST_RATE = 0.023  # x mean burst length 1.3 -> ~3 % of points
OUTLIER_FACTOR = (1.3, 3.0)
BIMODAL_P = 0.3
BIMODAL_SHIFT = 0.08

# --- online protocol -----------------------------------------------------------------------------
WARMUP = 10
SAME_ALARM = 5  # +- index distance under which a re-reported change is the same alarm
TP_INDEX_TOLERANCE = 5  # |reported index - c| for a true positive
NAIVE_TP_WINDOW = 10  # the naive rule's alarm time must be in [c, c + 10]
NAIVE_BASELINE_POINTS = 20
NAIVE_WINDOW = 5
NAIVE_MARGIN = 0.05

# --- perf check ----------------------------------------------------------------------------------
PERF_SERIES = 100
PERF_LENGTH = 10_000
PERF_CV = 0.02
PERF_TARGET_S = 2.0

DETECTORS = ("perfguard", "otava", "naive", "chance")
DEFAULT_DETECTORS = ("perfguard", "otava", "naive")
# The `chance` control: at each monitored point, an alarm with this probability, its index drawn from
# the last CHANCE_SPAN points and its direction at random. It knows nothing about the series; a
# detector that scores no better than it in a cell is guessing there.
CHANCE_RATE = 0.006
CHANCE_SPAN = 10


# ================================================================================================
# Series
# ================================================================================================


@dataclass(frozen=True, slots=True)
class Cell:
    """One grid cell: noise family, noise CV and step (a key of STEPS, "flat" or "drift")."""

    family: str
    cv: float
    step: str

    @property
    def kind(self) -> Literal["step", "flat", "drift"]:
        if self.step == "flat":
            return "flat"
        if self.step == "drift":
            return "drift"
        return "step"

    @property
    def key(self) -> str:
        return f"{self.family}/cv{self.cv * 100:g}%/{self.step}"

    @property
    def direction(self) -> Direction | None:
        """Direction of the true change: None for flat series."""
        if self.kind == "flat":
            return None
        return "down" if self.kind == "step" and STEPS[self.step] < 0 else "up"


@dataclass(frozen=True, slots=True)
class Case:
    """One synthetic series and its truth (`change`: first shifted / drifting index, None if flat)."""

    cell: Cell
    number: int
    values: Array
    change: int | None


def grid() -> list[Cell]:
    """All cells: step cells first, then flat, then drift; each in family x CV order."""
    steps = [*STEPS, "flat", "drift"]
    return [Cell(f, cv, s) for s in steps for f in FAMILIES for cv in CVS]


def outlier_factors(rng: np.random.Generator, n: int) -> Array:
    """Multiplicative factors: 1 except for ~3 % of points, upward spikes in bursts of 1-3 points."""
    factors = np.ones(n)
    for start in np.flatnonzero(rng.random(n) < OUTLIER_BURST_RATE):
        length = 1 if rng.random() < 0.8 else int(rng.integers(2, 4))
        stop = min(n, start + length)
        factors[start:stop] = rng.uniform(*OUTLIER_FACTOR, size=stop - start)
    return factors


def make_case(cell: Cell, number: int, seed: int) -> Case:
    """Series `number` of `cell`; depends only on (seed, cell, number)."""
    rng = np.random.default_rng([seed, zlib.crc32(cell.key.encode()), number])
    n = FLAT_LENGTH if cell.kind == "flat" else STEP_LENGTH
    level = np.full(n, LEVEL)
    change: int | None = None
    if cell.kind == "step":
        change = int(rng.integers(CHANGE_RANGE[0], CHANGE_RANGE[1] + 1))
        level[change:] *= 1.0 + STEPS[cell.step]
    elif cell.kind == "drift":
        change = DRIFT_START
        level[change:] *= 1.0 + DRIFT_PER_RUN * np.arange(1, n - change + 1)
    values = level * (1.0 + cell.cv * rng.standard_normal(n))
    if cell.family == "outliers":
        values *= outlier_factors(rng, n)
    elif cell.family == "bimodal":
        values *= np.where(rng.random(n) < BIMODAL_P, 1.0 + BIMODAL_SHIFT, 1.0)
    return Case(cell, number, values, change)


# ================================================================================================
# Detectors, run online
# ================================================================================================


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm raised after point `time` arrived, for a change starting at `index`."""

    time: int
    index: int
    direction: Direction
    kind: str = "step"  # or "drift": one steady movement, reported once (its start may move)


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """What a worker process needs to build a detector (kept picklable)."""

    name: str
    min_effect: float
    alpha: float | None


def perfguard_options(spec: DetectorSpec) -> DetectionOptions:
    if spec.alpha is None:
        return DetectionOptions(min_effect=spec.min_effect)
    return DetectionOptions(min_effect=spec.min_effect, alpha=spec.alpha)


def perfguard_finder(spec: DetectorSpec) -> Finder:
    options = perfguard_options(spec)

    def find(values: Array) -> list[tuple[int, Direction, str]]:
        steps, drift = fold_drift(values, detect_changes(values, options=options), options)
        found = [(int(cp.index), cp.direction, "step") for cp in steps]
        return found + ([(drift.index, drift.direction, "drift")] if drift is not None else [])

    return find


def otava_finder() -> Finder:
    from otava.series import AnalysisOptions, Metric, Series

    def find(values: Array) -> list[tuple[int, Direction, str]]:
        n = len(values)
        series = Series("bench", None, list(range(n)), {"v": Metric()}, {"v": values.tolist()}, {})
        found = series.analyze(AnalysisOptions()).change_points["v"]
        return [(int(cp.index), "up" if cp.forward_change_percent() >= 0 else "down", "step") for cp in found]

    return find


def online_changepoints(values: Array, find: Finder) -> list[Alarm]:
    """Run `find` on every prefix after the warm-up; turn what it reports into deduplicated alarms."""
    alarms: list[Alarm] = []
    for t in range(WARMUP, len(values)):
        for index, direction, kind in find(values[: t + 1]):
            if not any(a.direction == direction and a.kind == kind and (kind == "drift" or abs(a.index - index)
                                                                        <= SAME_ALARM) for a in alarms):
                alarms.append(Alarm(t, index, direction, kind))
    return alarms


def online_naive(values: Array) -> list[Alarm]:
    """Mean of the last 5 runs beyond baseline * (1 +- 5 %); one alarm per excursion and direction."""
    baseline = float(np.mean(values[:NAIVE_BASELINE_POINTS]))
    upper, lower = baseline * (1.0 + NAIVE_MARGIN), baseline * (1.0 - NAIVE_MARGIN)
    alarms: list[Alarm] = []
    was_up = was_down = False
    for t in range(NAIVE_BASELINE_POINTS, len(values)):
        mean = float(np.mean(values[t - NAIVE_WINDOW + 1 : t + 1]))
        is_up, is_down = mean > upper, mean < lower
        if is_up and not was_up:
            alarms.append(Alarm(t, t, "up"))
        if is_down and not was_down:
            alarms.append(Alarm(t, t, "down"))
        was_up, was_down = is_up, is_down
    return alarms


def online_chance(values: Array) -> list[Alarm]:
    """The control detector: random alarms at CHANCE_RATE, seeded by the series itself."""
    rng = np.random.default_rng(zlib.crc32(np.asarray(values, dtype=float).tobytes()))
    alarms: list[Alarm] = []
    for t in range(WARMUP, len(values)):
        if rng.random() < CHANCE_RATE:
            index = int(rng.integers(max(0, t - CHANCE_SPAN + 1), t + 1))
            direction: Direction = "up" if rng.random() < 0.5 else "down"
            if not any(a.direction == direction and abs(a.index - index) <= SAME_ALARM for a in alarms):
                alarms.append(Alarm(t, index, direction))
    return alarms


def evaluate(task: tuple[DetectorSpec, Array]) -> tuple[list[Alarm], float]:
    """Worker entry point: one detector online over one series; returns its alarms and seconds."""
    spec, values = task
    started = time.perf_counter()
    if spec.name == "naive":
        alarms = online_naive(values)
    elif spec.name == "chance":
        alarms = online_chance(values)
    elif spec.name == "otava":
        alarms = online_changepoints(values, otava_finder())
    else:
        alarms = online_changepoints(values, perfguard_finder(spec))
    return alarms, time.perf_counter() - started


# ================================================================================================
# Scoring
# ================================================================================================


@dataclass(frozen=True, slots=True)
class SeriesScore:
    """Outcome on one series: the true positive (or drift hit), if any, and the false positives."""

    hit: Alarm | None
    delay: int | None
    false_positives: int
    monitored_points: int
    steps: int = 0  # step alarms raised (drift cells: the staircase, if any)
    drifts: int = 0  # drift alarms raised
    findings: int = 0  # findings the service keeps for them: a drift goes on as the first stair it took in


def is_hit(alarm: Alarm, case: Case, index_is_time: bool) -> bool:
    """Whether `alarm` detects the true change of `case` (see the module docstring)."""
    c, want = case.change, case.cell.direction
    if c is None or want is None or alarm.direction != want or alarm.time < c:
        return False
    if case.cell.kind == "drift":
        return index_is_time or alarm.index >= c - TP_INDEX_TOLERANCE
    if index_is_time:
        return alarm.time <= c + NAIVE_TP_WINDOW
    return abs(alarm.index - c) <= TP_INDEX_TOLERANCE


def score_series(case: Case, alarms: Sequence[Alarm], index_is_time: bool) -> SeriesScore:
    hit = next((a for a in sorted(alarms, key=lambda a: a.time) if is_hit(a, case, index_is_time)), None)
    delay = None if hit is None or case.change is None else hit.time - case.change
    return SeriesScore(hit, delay, len(alarms) - (hit is not None), len(case.values) - WARMUP,
                       sum(a.kind == "step" for a in alarms), sum(a.kind == "drift" for a in alarms),
                       len(alarms) - sum(took_over_a_stair(d, alarms) for d in alarms if d.kind == "drift"))


def took_over_a_stair(drift: Alarm, alarms: Sequence[Alarm]) -> bool:
    """Whether the service would keep `drift` as the finding of a stair raised before it (same
    direction, begun at most STAIR_SLACK_RUNS before the drift: storage.findings._first_stair)."""
    return any(a.kind == "step" and a.direction == drift.direction and a.time < drift.time
               and a.index >= drift.index - STAIR_SLACK_RUNS for a in alarms)


def cell_metrics(scores: Sequence[SeriesScore]) -> dict[str, float | int | None]:
    """Recall, precision, F1, median delay, FP/1000 monitored points (and the counts behind them)."""
    series = len(scores)
    tp = sum(s.hit is not None for s in scores)
    fp = sum(s.false_positives for s in scores)
    points = sum(s.monitored_points for s in scores)
    delays = [s.delay for s in scores if s.delay is not None]
    recall = tp / series if series else 0.0
    precision = tp / (tp + fp) if tp + fp else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    median_delay = float(statistics.median(delays)) if delays else None
    return {
        "series": series,
        "tp": tp,
        "fp": fp,
        "monitored_points": points,
        "series_with_fp": sum(s.false_positives > 0 for s in scores),
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "median_delay": median_delay,
        # drift cells: how far the level had drifted at the median delay, in %
        "median_drift_pct": None if median_delay is None else (median_delay + 1) * DRIFT_PER_RUN * 100,
        "fp_per_1000": 1000.0 * fp / points if points else 0.0,
        "steps_per_series": sum(s.steps for s in scores) / series if series else 0.0,
        "drifts_per_series": sum(s.drifts for s in scores) / series if series else 0.0,
        "findings_per_series": sum(s.findings for s in scores) / series if series else 0.0,
    }


# ================================================================================================
# Running
# ================================================================================================


@dataclass
class DetectorRun:
    """All alarms of one detector, per case, and how long it took."""

    name: str
    alarms: list[list[Alarm]]
    wall_s: float
    compute_s: float


def run_detector(spec: DetectorSpec, cases: Sequence[Case], pool: ProcessPoolExecutor | None,
                 jobs: int) -> DetectorRun:
    tasks = [(spec, case.values) for case in cases]
    started = time.perf_counter()
    if pool is None:
        results = [evaluate(task) for task in tasks]
    else:
        results = list(pool.map(evaluate, tasks, chunksize=max(1, len(tasks) // (jobs * 16))))
    wall = time.perf_counter() - started
    return DetectorRun(spec.name, [a for a, _ in results], wall, sum(s for _, s in results))


def group_by_cell(cases: Sequence[Case]) -> dict[Cell, list[int]]:
    groups: dict[Cell, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(case.cell, []).append(i)
    return groups


def score_run(run: DetectorRun, cases: Sequence[Case]) -> dict[str, dict[str, float | int | None]]:
    index_is_time = run.name == "naive"
    return {
        cell.key: cell_metrics([score_series(cases[i], run.alarms[i], index_is_time) for i in indices])
        for cell, indices in group_by_cell(cases).items()
    }


# ================================================================================================
# Report
# ================================================================================================


def fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_delay(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cells_of(kind: str, cells: Iterable[Cell]) -> list[Cell]:
    return [c for c in cells if c.kind == kind]


def report(metrics: dict[str, dict[str, dict[str, Any]]], cells: Sequence[Cell],
           runs: dict[str, DetectorRun], total_wall: float, jobs: int) -> tuple[str, dict[str, Any]]:
    """The printed report and the summary numbers (for --json)."""
    names = list(metrics)
    out: list[str] = []
    lead = ["family", "CV", "step"]

    step_cells = cells_of("step", cells)
    out.append("## Step cells")
    out.append("R recall, P precision, F1, d50 median delay (points after the change), FP/1k false "
               "positives per 1000 monitored points. TP: alarm at t >= c, right direction, reported "
               f"index within +-{TP_INDEX_TOLERANCE} of c; naive (no index): c <= t <= c+{NAIVE_TP_WINDOW}.\n")
    header = lead + [f"{n} {m}" for n in names for m in ("R", "P", "F1", "d50", "FP/1k")]
    rows = []
    for cell in step_cells:
        row = [cell.family, f"{cell.cv:.0%}", cell.step]
        for n in names:
            m = metrics[n][cell.key]
            row += [fmt(m["recall"]), fmt(m["precision"]), fmt(m["f1"]), fmt_delay(m["median_delay"]),
                    fmt(m["fp_per_1000"], 1)]
        rows.append(row)
    out.append(markdown_table(header, rows))

    out.append("\n## Flat cells (no change)\n")
    header = lead[:2] + [f"{n} {m}" for n in names for m in ("FP", "FP/1k", "series w/ FP")]
    rows = []
    for cell in cells_of("flat", cells):
        row = [cell.family, f"{cell.cv:.0%}"]
        for n in names:
            m = metrics[n][cell.key]
            row += [str(m["fp"]), fmt(m["fp_per_1000"], 1), f"{m['series_with_fp']}/{m['series']}"]
        rows.append(row)
    out.append(markdown_table(header, rows))

    out.append(f"\n## Drift cells (+{DRIFT_PER_RUN:.1%} of the level per run from index {DRIFT_START})")
    out.append("hit: an 'up' alarm at t >= drift start (index >= start - 5); d50: median points from drift "
               "start to the hit; drift: level increase at that median; other/1k: all other alarms per 1000 "
               "monitored points (including re-alarms as the drift goes on); steps, drifts: step and drift "
               "alarms per series (a drift reported as one finding: 0 steps, 1 drift); findings: what the "
               "service keeps for them per series (a drift goes on as the first stair it took in).\n")
    header = lead[:2] + [f"{n} {m}" for n in names
                         for m in ("hit", "d50", "drift", "other/1k", "steps", "drifts", "findings")]
    rows = []
    for cell in cells_of("drift", cells):
        row = [cell.family, f"{cell.cv:.0%}"]
        for n in names:
            m = metrics[n][cell.key]
            drift = "-" if m["median_drift_pct"] is None else f"{m['median_drift_pct']:.1f}%"
            row += [fmt(m["recall"]), fmt_delay(m["median_delay"]), drift, fmt(m["fp_per_1000"], 1),
                    fmt(m["steps_per_series"]), fmt(m["drifts_per_series"]), fmt(m["findings_per_series"])]
        rows.append(row)
    out.append(markdown_table(header, rows))

    summary: dict[str, Any] = {"mean_f1_step_cells": {}, "flat_fp_per_1000_by_family": {},
                               "gauss_cv2_+5%": {}, "wall_s": {}, "in_worker_s": {}}
    for n in names:
        summary["mean_f1_step_cells"][n] = statistics.fmean(metrics[n][c.key]["f1"] for c in step_cells)
        by_family = {}
        for family in FAMILIES:
            flat = [metrics[n][c.key] for c in cells_of("flat", cells) if c.family == family]
            points = sum(m["monitored_points"] for m in flat)
            by_family[family] = 1000.0 * sum(m["fp"] for m in flat) / points if points else None
        summary["flat_fp_per_1000_by_family"][n] = by_family
        focus = metrics[n].get(Cell("gauss", 0.02, "+5%").key)
        if focus is not None:
            summary["gauss_cv2_+5%"][n] = {"recall": focus["recall"], "median_delay": focus["median_delay"]}
        summary["wall_s"][n] = runs[n].wall_s
        summary["in_worker_s"][n] = runs[n].compute_s

    out.append("\n## Summary\n")
    out.append(f"Mean F1 over the {len(step_cells)} step cells: "
               + ", ".join(f"{n} {summary['mean_f1_step_cells'][n]:.3f}" for n in names))
    out.append("FP per 1000 monitored points on flat series:")
    for family in FAMILIES:
        out.append(f"  {family}: " + ", ".join(
            f"{n} {fmt(summary['flat_fp_per_1000_by_family'][n][family], 2)}" for n in names))
    if summary["gauss_cv2_+5%"]:
        out.append("gauss CV 2% +5%: " + "; ".join(
            f"{n} recall {v['recall']:.2f}, median delay {fmt_delay(v['median_delay'])}"
            for n, v in summary["gauss_cv2_+5%"].items()))
    if "perfguard" in metrics and "otava" in metrics:
        worse = [c.key for c in step_cells
                 if metrics["perfguard"][c.key]["f1"] < metrics["otava"][c.key]["f1"]]
        summary["perfguard_f1_below_otava"] = worse
        out.append(f"Cells where perfguard F1 < otava F1 ({len(worse)} of {len(step_cells)}): "
                   + (", ".join(worse) if worse else "none"))
    out.append(f"Wall time per detector (evaluation of all series, {jobs} process(es); in-worker = seconds "
               "summed over the series): " + ", ".join(
                   f"{n} {runs[n].wall_s:.1f} s (in-worker {runs[n].compute_s:.1f} s)" for n in names))
    out.append(f"Whole run: {total_wall:.1f} s")
    return "\n".join(out), summary


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in ("numpy", "scipy", "apache-otava", "perfguard"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def otava_defaults() -> dict[str, Any]:
    from otava.series import AnalysisOptions

    return dict(AnalysisOptions().to_json())


# ================================================================================================
# Perf check
# ================================================================================================


def perf_series(seed: int) -> list[tuple[list[float], list[tuple[int, Direction]]]]:
    """PERF_SERIES gauss CV 2 % series of PERF_LENGTH points, each with 2-3 steps of 3-20 %."""
    rng = np.random.default_rng([seed, zlib.crc32(b"perf")])
    made = []
    for _ in range(PERF_SERIES):
        count = int(rng.integers(2, 4))
        positions = np.sort(rng.choice(np.arange(1000, PERF_LENGTH - 999, 500), size=count, replace=False))
        level = np.full(PERF_LENGTH, LEVEL)
        truth: list[tuple[int, Direction]] = []
        for position in positions:
            step = float(rng.uniform(0.03, 0.20)) * (1 if rng.random() < 0.5 else -1)
            level[position:] *= 1.0 + step
            truth.append((int(position), "up" if step > 0 else "down"))
        values = level * (1.0 + PERF_CV * rng.standard_normal(PERF_LENGTH))
        made.append((values.tolist(), truth))
    return made


def run_perf(spec: DetectorSpec, seed: int) -> int:
    """Time one offline check per series as the service makes it (a list of floats, as it passes):
    detect_changes, then fold_drift over what it found."""
    options = perfguard_options(spec)
    made = perf_series(seed)
    seconds: list[float] = []
    found = matched = 0
    for values, truth in made:
        started = time.perf_counter()
        changes, _ = fold_drift(np.asarray(values), detect_changes(values, options=options), options)
        seconds.append(time.perf_counter() - started)
        found += len(changes)
        matched += sum(any(cp.direction == d and abs(cp.index - c) <= TP_INDEX_TOLERANCE for cp in changes)
                       for c, d in truth)
    total = sum(seconds)
    steps = sum(len(t) for _, t in made)
    print(f"perf: {PERF_SERIES} series x {PERF_LENGTH} points (gauss CV {PERF_CV:.0%}), "
          f"one offline detect_changes + fold_drift call each, min_effect={options.min_effect}")
    print(f"total {total:.3f} s, median {statistics.median(seconds) * 1e3:.1f} ms, "
          f"max {max(seconds) * 1e3:.1f} ms per series")
    print(f"true steps found (index +-{TP_INDEX_TOLERANCE}, direction): {matched} of {steps}; "
          f"change points reported: {found}")
    ok = total <= PERF_TARGET_S
    print(f"target <= {PERF_TARGET_S:g} s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


# ================================================================================================
# CLI
# ================================================================================================


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Online change-point detection benchmark: perfguard vs Apache Otava vs a naive "
        "'mean of the last 5 runs above baseline + 5 %' rule, on seeded synthetic series. "
        "Otava is a bench-only dependency: .venv/bin/pip install --no-deps apache-otava==0.8.0 "
        "(its core needs only numpy and scipy; its declared pins would downgrade both).",
        epilog="The protocol (TP / FP / delay definitions) is in this script's module docstring.",
    )
    parser.add_argument("--series", type=int, default=20,
                        help="series per cell, the same series for every detector (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--min-effect", type=float, default=0.015,
                        help="perfguard DetectionOptions.min_effect (default 0.015)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="perfguard DetectionOptions.alpha (default: DetectionOptions' own)")
    parser.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS),
                        help=f"comma-separated subset of {','.join(DETECTORS)} (default "
                        f"{','.join(DEFAULT_DETECTORS)}; chance: random alarms, a control)")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2, help="worker processes (default 2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all numbers as JSON to PATH")
    parser.add_argument("--perf", action="store_true",
                        help=f"only the speed check: {PERF_SERIES} x {PERF_LENGTH} points, one offline "
                        f"detect_changes + fold_drift call per series, target <= {PERF_TARGET_S:g} s total")
    args = parser.parse_args(argv)
    args.detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = sorted(set(args.detectors) - set(DETECTORS))
    if unknown or not args.detectors:
        parser.error(f"--detectors: unknown {unknown}; choose from {', '.join(DETECTORS)}")
    if args.series < 1:
        parser.error("--series must be >= 1")
    if "otava" in args.detectors and not args.perf:
        try:
            import otava.series  # noqa: F401
        except ImportError:
            parser.error("Apache Otava is not installed: .venv/bin/pip install --no-deps apache-otava==0.8.0 "
                         "(or leave it out with --detectors perfguard,naive)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.perf:
        return run_perf(DetectorSpec("perfguard", args.min_effect, args.alpha), args.seed)
    spec_for = {n: DetectorSpec(n, args.min_effect, args.alpha) for n in args.detectors}

    started = time.perf_counter()
    cells = grid()
    cases = [make_case(cell, number, args.seed) for cell in cells for number in range(args.series)]
    runs: dict[str, DetectorRun] = {}
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for name in args.detectors:
                runs[name] = run_detector(spec_for[name], cases, pool, args.jobs)
    else:
        for name in args.detectors:
            runs[name] = run_detector(spec_for[name], cases, None, 1)
    metrics = {name: score_run(run, cases) for name, run in runs.items()}
    total_wall = time.perf_counter() - started

    config: dict[str, Any] = {
        "seed": args.seed, "series_per_cell": args.series, "jobs": args.jobs,
        "families": list(FAMILIES), "cvs": list(CVS), "steps": STEPS, "level": LEVEL,
        "step_length": STEP_LENGTH, "flat_length": FLAT_LENGTH, "change_range": list(CHANGE_RANGE),
        "drift_start": DRIFT_START, "drift_per_run": DRIFT_PER_RUN, "warmup": WARMUP,
        "same_alarm_tolerance": SAME_ALARM, "tp_index_tolerance": TP_INDEX_TOLERANCE,
        "naive": {"baseline_points": NAIVE_BASELINE_POINTS, "window": NAIVE_WINDOW, "margin": NAIVE_MARGIN,
                  "tp_window": NAIVE_TP_WINDOW},
        "perfguard_options": asdict(perfguard_options(DetectorSpec("perfguard", args.min_effect, args.alpha))),
        "versions": versions(),
    }
    if "otava" in runs:
        config["otava_options"] = otava_defaults()

    header = (f"# Online change-point detection: {', '.join(args.detectors)}\n\n"
              f"{args.series} series per cell, seed {args.seed}; step/drift series {STEP_LENGTH} points "
              f"(change index in [{CHANGE_RANGE[0]}, {CHANGE_RANGE[1]}]), flat {FLAT_LENGTH}; warm-up "
              f"{WARMUP}; perfguard {config['perfguard_options']}")
    if "otava_options" in config:
        header += f"; otava defaults {config['otava_options']}"
    text, summary = report(metrics, cells, runs, total_wall, args.jobs)
    print(header + "\n")
    print(text)

    if args.json:
        dump = {
            "config": config,
            "metrics": metrics,
            "summary": summary,
            "total_wall_s": total_wall,
            "series": [
                {"cell": case.cell.key, "number": case.number, "change": case.change,
                 "alarms": {n: [[a.time, a.index, a.direction] for a in runs[n].alarms[i]] for n in runs}}
                for i, case in enumerate(cases)
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
