"""The change-point algorithm on seeded series: where it fires, where it must not, and what it reports."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.core.metrics import WATCHED, verdict
from monitor.detection.changepoints import (
    DetectionOptions,
    detect_changes,
    hampel,
    neighbourhood_median,
    noise_scale,
)
from monitor.detection.confirm import bootstrap_interval, confirms

LEVEL = 10.0


def series(seed: int, n: int = 120, cv: float = 0.02, step: float = 0.0, at: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = LEVEL * (1 + cv * rng.standard_normal(n))
    x[at:] *= 1 + step
    return x


def online_alarms(x: np.ndarray, options: DetectionOptions, warmup: int = 10) -> list[tuple[int, int, str]]:
    """(time, index, direction) of each new change point, checking after every point as the service does."""
    seen: list[tuple[int, int, str]] = []
    for t in range(warmup, len(x)):
        for cp in detect_changes(x[: t + 1], options=options):
            if not any(abs(cp.index - i) <= 5 and cp.direction == d for _, i, d in seen):
                seen.append((t, cp.index, cp.direction))
    return seen


@pytest.mark.parametrize("step", [0.05, 0.10, 0.20, -0.10])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_known_step_is_found_at_its_index_with_its_direction_and_size(step: float, seed: int) -> None:
    x = series(seed, step=step, at=70)
    points = detect_changes(x, options=DetectionOptions(min_effect=0.02))
    assert len(points) == 1
    (cp,) = points
    assert abs(cp.index - 70) <= 1
    assert cp.direction == ("up" if step > 0 else "down")
    assert cp.rel_change == pytest.approx(step, abs=0.015)
    assert cp.before == pytest.approx(LEVEL, rel=0.02)
    assert 0 <= cp.p_value < 0.001


def test_two_steps_are_both_found() -> None:
    x = series(4, n=150)
    x[50:] *= 1.10
    x[100:] *= 0.85
    points = detect_changes(x, options=DetectionOptions(min_effect=0.03))
    assert [(abs(p.index - at) <= 1, p.direction) for p, at in zip(points, (50, 100))] == [(True, "up"), (True, "down")]


@pytest.mark.parametrize("family", ["gauss", "outliers", "bimodal"])
def test_flat_noise_stays_within_one_false_alarm_per_thousand_checks(family: str) -> None:
    rng = np.random.default_rng(["gauss", "outliers", "bimodal"].index(family))
    alarms = checked = 0
    for _ in range(12):
        x = LEVEL * (1 + 0.02 * rng.standard_normal(200))
        if family == "outliers":
            x = np.where(rng.random(200) < 0.03, x * rng.uniform(1.3, 3.0, 200), x)
        elif family == "bimodal":
            x = np.where(rng.random(200) < 0.3, x * 1.08, x)
        alarms += len(online_alarms(x, DetectionOptions(min_effect=0.015)))
        checked += 200 - 10
    assert alarms <= checked / 1000


def test_outliers_anywhere_and_at_the_newest_point_are_not_changes() -> None:
    x = series(7, n=100)
    for i in (20, 45, 46, 70):
        x[i] *= 2.5  # lone spikes and a pair
    options = DetectionOptions(min_effect=0.015)
    assert detect_changes(x, options=options) == []
    spiked = np.append(x, [LEVEL * 3])  # the newest point is an outlier
    assert detect_changes(spiked, options=options) == []
    burst = np.append(x, LEVEL * np.array([1.4, 2.9, 1.9]))  # three wild readings: a burst, not a level
    assert detect_changes(burst, options=options) == []


def test_a_new_level_is_reported_after_three_points_not_before() -> None:
    x = series(8, n=80)
    options = DetectionOptions(min_effect=0.05)
    shifted = np.append(x, LEVEL * np.array([1.3, 1.3, 1.3]) * (1 + 0.01 * np.array([0.2, -0.5, 0.3])))
    assert detect_changes(shifted[:-1], options=options) == []
    (cp,) = detect_changes(shifted, options=options)
    assert cp.index == 80 and cp.direction == "up"


def test_the_minimum_effect_filters_small_but_significant_shifts() -> None:
    x = series(9, n=200, cv=0.005, step=0.03, at=100)  # 6 sigma, but only 3 %
    assert detect_changes(x, options=DetectionOptions(min_effect=0.05)) == []
    (cp,) = detect_changes(x, options=DetectionOptions(min_effect=0.02))
    assert abs(cp.index - 100) <= 1


def test_noise_is_estimated_from_the_history_not_assumed() -> None:
    quiet, loud = series(10, cv=0.01), series(10, cv=0.05)
    assert noise_scale(quiet) == pytest.approx(0.01 * LEVEL, rel=0.3)
    assert noise_scale(loud) == pytest.approx(0.05 * LEVEL, rel=0.3)
    stepped = series(10, cv=0.01, step=0.5)
    assert noise_scale(stepped) == pytest.approx(noise_scale(quiet), rel=0.3)  # a step is not noise
    # The same +4 % step is a change in the quiet series and noise in the loud one.
    options = DetectionOptions(min_effect=0.02)
    assert detect_changes(series(11, cv=0.01, step=0.04), options=options)
    assert not detect_changes(series(11, cv=0.05, step=0.04, n=70, at=60), options=options)


def test_hampel_replaces_lone_spikes_but_keeps_a_level() -> None:
    y = np.array([1.0, 1.01, 0.99, 5.0, 1.0, 1.02, 0.98, 1.0, 2.0, 2.01, 1.99])
    centre = neighbourhood_median(y)
    cleaned = hampel(y, 0.01, centre=centre)
    assert cleaned[3] == pytest.approx(1.0, abs=0.02)  # the spike
    assert list(cleaned[-3:]) == list(y[-3:])  # three points at a new level stay


@pytest.mark.parametrize(
    "values",
    [[], [1.0], [1.0, 2.0], [math.nan] * 30, [5.0] * 40],
    ids=["empty", "single", "two", "all-nan", "constant"],
)
def test_degenerate_series_give_no_change_points(values: list[float]) -> None:
    assert detect_changes(values) == []


def test_nan_points_are_skipped_and_indices_stay_the_callers() -> None:
    x = series(12, step=0.2, at=60).tolist()
    for i in (5, 30, 59, 61):
        x[i] = math.nan
    (cp,) = detect_changes(x)
    assert cp.index in (60, 62)  # 61 is NaN: the change starts at 60 (or the next finite point)
    assert math.isfinite(cp.rel_change)


def test_raw_samples_confirm_a_real_shift_and_not_an_unreal_one() -> None:
    rng = np.random.default_rng(13)
    x = series(13, n=40, step=0.2, at=25)
    samples = [list(v * (1 + 0.03 * rng.standard_normal(300))) for v in x]
    (cp,) = detect_changes(x, samples=samples)
    low, high = cp.samples_interval
    assert 0.15 < low < high < 0.25 and confirms(cp) is True
    assert cp.samples_p_value is not None and cp.samples_p_value < 1e-6
    # The same summary series, but raw samples that do not move: the samples do not confirm it.
    flat = [list(LEVEL * (1 + 0.03 * rng.standard_normal(300))) for _ in x]
    (cp,) = detect_changes(x, samples=flat)
    assert confirms(cp) is False


def test_the_bootstrap_resamples_runs_so_one_odd_run_widens_the_interval() -> None:
    rng = np.random.default_rng(14)
    before = [list(10 + rng.standard_normal(500)) for _ in range(6)]
    after = [list(10.5 + rng.standard_normal(500)) for _ in range(6)]
    low, high = bootstrap_interval(before, after)
    odd = [*after[:-1], list(14 + rng.standard_normal(500))]
    low2, high2 = bootstrap_interval(before, odd)
    assert high2 - low2 > 2 * (high - low)


def test_direction_per_metric() -> None:
    assert verdict("latency_ms_p50", "up") == "regression"
    assert verdict("latency_ms_p50", "down") == "improvement"
    assert verdict("throughput_per_s", "down") == "regression"
    assert verdict("accuracy", "down") == "regression"
    assert verdict("accuracy", "up") == "improvement"
    assert verdict("peak_rss_mb", "up") == verdict("energy_j_per_inference", "up") == "regression"
    assert all(m.worse in ("up", "down") for m in WATCHED.values())


def test_a_long_series_keeps_every_change_at_its_place() -> None:
    x = series(15, n=10_000)
    x[3000:] *= 1.1
    x[7000:] *= 0.9
    points = detect_changes(x)  # speed: bench/detection.py --perf (100 x 10,000 points)
    assert [p.direction for p in points] == ["up", "down"]
    assert [abs(p.index - at) <= 2 for p, at in zip(points, (3000, 7000))] == [True, True]


def test_a_metric_flat_until_now_reports_its_new_level_after_three_runs() -> None:
    size = np.array([10.0] * 30 + list(10.5 + 0.001 * np.array([1, -1, 0])))  # e.g. model size in MB
    (cp,) = detect_changes(size, options=DetectionOptions(min_effect=0.01))
    assert cp.index == 30 and cp.rel_change == pytest.approx(0.05, abs=0.001)


def test_a_tail_change_is_confirmed_on_the_tail_not_the_median() -> None:
    rng = np.random.default_rng(16)
    before = [list(10 + rng.standard_normal(2000)) for _ in range(6)]
    # Same median, but one call in twenty is now 50 % slower: p99 moves, p50 does not.
    after = [list(np.where(rng.random(2000) < 0.05, 15.0, 10.0) + rng.standard_normal(2000)) for _ in range(6)]
    low50, high50 = bootstrap_interval(before, after, quantile=0.5)
    low99, high99 = bootstrap_interval(before, after, quantile=0.99)
    assert low50 < 0.02 and high50 < 0.05
    assert low99 > 0.2
