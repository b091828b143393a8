"""Slow drift: a series that creeps is one drift finding, updated while it lasts, not a staircase of
steps; a real step, alone or on top of a drift, is still a step; rules read drift findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.core.series import Drift, FindingRecord, Level, SeriesKey, SeriesState
from monitor.detection.changepoints import DetectionOptions, detect_changes
from monitor.detection.check import check_model
from monitor.detection.drift import detect_drift, fold_drift
from storage import findings as store
from storage.db import Database
from storage.queries import save_runs
from tests.rules_helpers import MODEL, rules_config, run
from tests.storage_helpers import saved
from tests.test_rules_builtin import actions, decide

OPTIONS = DetectionOptions(min_effect=0.015)


def creep(n: int, start: int, per_run: float, seed: int, cv: float = 0.01, level: float = 10.0) -> np.ndarray:
    """Flat until `start`, then `per_run` (relative) higher every run, with Gaussian noise."""
    rng = np.random.default_rng(seed)
    shape = 1.0 + per_run * np.clip(np.arange(n) - start + 1, 0, None)
    return level * shape * (1 + cv * rng.standard_normal(n))


def steps(levels: list[tuple[int, float]], seed: int, cv: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([lvl * (1 + cv * rng.standard_normal(count)) for count, lvl in levels])


@pytest.mark.parametrize("seed", range(5))
def test_a_creep_is_one_drift_from_where_it_began_not_a_staircase(seed: int) -> None:
    values = creep(120, 60, 0.002, seed)
    kept, drift = fold_drift(values, detect_changes(values, options=OPTIONS), OPTIONS)
    assert kept == [] and drift is not None
    assert drift.direction == "up" and abs(drift.index - 60) <= 6
    assert drift.rel_slope == pytest.approx(0.002, rel=0.3) and drift.rel_change == pytest.approx(0.12, rel=0.25)
    assert drift.points == 120 - drift.index and drift.p_value < 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_noise_and_real_steps_are_no_drift(seed: int) -> None:
    assert detect_drift(10 * (1 + 0.02 * np.random.default_rng(seed).standard_normal(200)), OPTIONS) is None
    one = steps([(70, 1.0), (50, 1.05)], seed)
    assert detect_drift(one, OPTIONS) is None
    stairs = steps([(30, 1.0), (20, 1.2), (10, 1.5)], seed)  # levels flat between two real steps
    found = detect_changes(stairs, options=OPTIONS)
    assert fold_drift(stairs, found, OPTIONS) == (found, None) and len(found) == 2


def test_a_step_on_top_of_a_drift_is_still_a_step() -> None:
    kept_step = 0
    for seed in range(10):
        values = creep(160, 60, 0.002, seed)
        values[120:] *= 1.10
        kept, drift = fold_drift(values, detect_changes(values, options=OPTIONS), OPTIONS)
        assert drift is not None and abs(drift.index - 60) <= 8
        kept_step += any(abs(p.index - 120) <= 3 and p.direction == "up" for p in kept)
    assert kept_step >= 7


def store_creep(db: Database, values: np.ndarray, start: int = 0) -> None:
    save_runs(db, [run(start + i, latency_ms_p50=1.0, peak_rss_mb=float(v)) for i, v in enumerate(values)])


def test_a_drift_is_stored_once_and_kept_up_to_date_while_it_lasts(db: Database, tmp_path: Path) -> None:
    loaded = rules_config(tmp_path, [])
    values = creep(140, 40, 0.003, seed=3, level=300.0)
    store_creep(db, values[:100])
    first = [f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "peak_rss_mb"]
    assert [(f.kind, f.verdict, f.change) for f in first] == [("drift", "regression", "up")]
    drift = first[0]
    assert drift.drift is not None and drift.drift.slope_per_run == pytest.approx(0.003, rel=0.3)
    assert drift.drift.slope_per_day == pytest.approx(0.003 * 144, rel=0.3)  # a run every ten minutes
    assert drift.before.median == pytest.approx(300.0, rel=0.02)
    store_creep(db, values[100:], start=100)
    later = [f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "peak_rss_mb"]
    assert [f.id for f in later] == [drift.id]  # the same finding, gone further
    assert later[0].rel_change > drift.rel_change + 0.08 and later[0].state == "open"
    assert later[0].drift is not None and later[0].drift.runs > drift.drift.runs
    stored = store.findings(db, MODEL)
    assert [f.kind for f in stored if f.metric == "peak_rss_mb"] == ["drift"]


def test_the_memory_rule_reads_a_drift_finding(db: Database, tmp_path: Path) -> None:
    store_creep(db, creep(120, 40, 0.003, seed=5, level=300.0))
    decisions, checked = decide(db, tmp_path, {"use": "memory_growth"})
    (drift,) = [f for f in checked.findings if f.metric == "peak_rss_mb"]
    assert drift.kind == "drift" and actions(decisions) == [("alert", f"finding:{drift.id}")]
    assert decisions[0].reason.startswith(f"peak_rss_mb of {MODEL} baseline/cpu/b8 has crept up ")
    assert " a run, " in decisions[0].reason


def test_checked_after_every_run_a_creep_ends_as_one_open_drift(db: Database, tmp_path: Path) -> None:
    """As the daemon sees it: a check after each run. Stairs a check reported while the creep was young
    are resolved as part of the drift once it is seen; what stays open is the drift alone."""
    loaded = rules_config(tmp_path, [])
    values = creep(110, 40, 0.003, seed=11, level=300.0)
    store_creep(db, values[:30])
    for i in range(30, values.size):
        store_creep(db, values[i : i + 1], start=i)
        check_model(db, loaded, MODEL, None)
    memory = [f for f in store.findings(db, MODEL) if f.metric == "peak_rss_mb"]
    assert [(f.kind, f.change) for f in memory if f.state == "open"] == [("drift", "up")]
    assert all(f.resolution == "part of a drift" for f in memory if f.kind == "step")
    # The creep's first report goes on as its drift: the finding people were told about first.
    (drift,) = [f for f in memory if f.kind == "drift"]
    assert drift.id == min(f.id for f in memory if f.id is not None)


def test_a_creep_first_reported_as_steps_goes_on_as_the_first_one(db: Database) -> None:
    """The earliest stair becomes the drift finding (its id, so rules act on the cause once); a later
    stair is resolved as part of the drift; a step from before the drift began is left alone."""
    records = saved(db, [run(i, latency_ms_p50=1.0, peak_rss_mb=300.0 + i) for i in range(40)])
    order = {r.run_id: i for i, r in enumerate(records) if r.run_id is not None}
    key = SeriesKey("baseline", "cpu", 8)
    state = {(key, "peak_rss_mb", "absolute"): SeriesState(330.0, 0.05)}

    def found(kind: str, at: int, rel: float) -> FindingRecord:
        run_id = records[at].run_id
        assert run_id is not None
        return FindingRecord(
            model=MODEL, key=key, metric="peak_rss_mb", change="up", verdict="regression", change_run_id=run_id,
            change_at=records[at].started_at, before=Level.from_dict({"median": 300.0}),
            after=Level.from_dict({"median": 300.0 * (1 + rel)}), rel_change=rel, p_value=1e-9, kind=kind,
            drift=Drift(slope_per_run=0.003, slope_per_day=0.43, runs=40 - at) if kind == "drift" else None,
        )

    older, first, second = store.sync_findings(db, MODEL, [found("step", 5, 0.4), found("step", 24, 0.06),
                                                           found("step", 36, 0.12)], state, order)[::-1]
    after = {f.id: f for f in store.sync_findings(db, MODEL, [found("step", 5, 0.4), found("drift", 21, 0.06)],
                                                   state, order)}
    assert (after[first.id].kind, after[first.id].state, after[first.id].drift) == ("drift", "open", Drift(
        slope_per_run=0.003, slope_per_day=0.43, runs=19))
    assert after[first.id].change_run_id == records[21].run_id and after[first.id].first_seen == first.first_seen
    assert (after[second.id].kind, after[second.id].state, after[second.id].resolution) == (
        "step", "resolved", "part of a drift")
    assert (after[older.id].kind, after[older.id].state) == ("step", "open")
    again = store.sync_findings(db, MODEL, [found("step", 5, 0.4), found("drift", 20, 0.07)], state, order)
    assert sorted((f.id, f.kind, f.state) for f in again) == sorted(
        [(older.id, "step", "open"), (first.id, "drift", "open"), (second.id, "step", "resolved")])


def test_checked_online_a_young_creep_is_rarely_taken_for_a_step() -> None:
    """After each new point, as the service checks: a creep cut into a stair before it can be told
    from a step happens in fewer than one series in one (the newest cut waits while a ramp that began
    before it fits as well as a jump)."""
    stairs = 0
    for seed in range(10):
        values = creep(120, 60, 0.002, seed)
        seen: list[int] = []
        for t in range(20, values.size):
            steps, _ = fold_drift(values[: t + 1], detect_changes(values[: t + 1], options=OPTIONS), OPTIONS)
            seen += [p.index for p in steps if p.index >= 55 and not any(abs(p.index - q) <= 5 for q in seen)]
        stairs += len(seen)
    assert stairs <= 8  # 12 without the wait
