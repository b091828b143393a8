"""The step search on smooth series (serial.py, selection.py): a smooth movement is not read as stairs,
while levels in independent noise keep every step the search found, and a real break in a trend stays."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.detection import changepoints
from monitor.detection.changepoints import DetectionOptions, detect_changes
from monitor.detection.selection import select


def smooth(kind: str, seed: int) -> np.ndarray:
    """A series that moves smoothly, with little noise: a growth curve or a seasonal swing."""
    rng = np.random.default_rng(seed)
    t = np.arange(300, dtype=float)
    shape = 100 / (1 + np.exp(-(t - 150) / 40)) if kind == "growth" else 50 + 10 * np.sin(t / 20)
    return shape + 0.3 * rng.standard_normal(t.size)


@pytest.mark.parametrize("kind", ["growth", "season"])
@pytest.mark.parametrize("seed", range(3))
def test_a_smooth_movement_is_not_read_as_stairs(kind: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    values = smooth(kind, seed)
    assert len(detect_changes(values)) <= 1
    # Without the second, correlation-aware search and the selection, the same series is a staircase.
    monkeypatch.setattr(changepoints, "MIN_RHO", 2.0)
    monkeypatch.setattr(changepoints, "select", lambda z, cuts: cuts)
    assert len(detect_changes(values)) >= 15


@pytest.mark.parametrize("seed", range(5))
def test_steps_in_independent_noise_are_all_kept(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([10 * (1 + 0.02 * rng.standard_normal(60)), 10.6 * (1 + 0.02 * rng.standard_normal(40)),
                             10.0 * (1 + 0.02 * rng.standard_normal(30))])
    assert select(values, [60, 100]) == [60, 100]
    found = detect_changes(values, options=DetectionOptions(min_effect=0.03))
    assert [(abs(c.index - at) <= 2, c.direction) for c, at in zip(found, [60, 100], strict=True)] == [
        (True, "up"), (True, "down")]


def test_a_trend_with_one_real_break_keeps_the_break() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(200, dtype=float)
    values = 50 + 0.2 * t + 0.5 * rng.standard_normal(200)
    values[120:] += 15.0  # a jump far above the trend's noise
    assert select(values, [40, 80, 120, 160]) == [120]
