"""Detection over stored history, on SQLite and PostgreSQL: findings, directions, env changes, baselines."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from monitor.config import LoadedConfig, load_config
from monitor.core.runs import (
    FLAG_CONTENDED,
    EnvFingerprint,
    HostCondition,
    RunMetrics,
    RunRecord,
)
from monitor.core.series import FindingRecord, Level, SeriesKey, SeriesState
from monitor.detection.attribution import judge
from monitor.detection.baseline import NoRunsError, accept
from monitor.detection.check import check_model
from storage import findings as store
from storage.db import Database
from storage.queries import save_runs
from tests.cli_helpers import perfguard, tiny_model, write_config
from tests.storage_helpers import T0

MODEL = "m"
KEY = SeriesKey("baseline", "cpu", 8)


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedConfig:
    return load_config(write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL)], extra="[detection]\nconfirm = false\n"))


def run(i: int, p50: float, *, status: str = "ok", flags: tuple[str, ...] = (), threads: int = 2,
        throughput: float | None = None, samples: list[float] | None = None) -> RunRecord:
    started = T0 + timedelta(minutes=10 * i)
    ok = status == "ok"
    return RunRecord(
        model=MODEL, variant="baseline", device="cpu", batch_size=8, status=status,  # type: ignore[arg-type]
        error=None if ok else "RuntimeError: boom", started_at=started, finished_at=started + timedelta(seconds=3),
        metrics=RunMetrics(latency_ms_p50=p50 if ok else None,
                           throughput_per_s=(throughput if throughput is not None else 8000 / p50) if ok else None),
        env=EnvFingerprint(torch="2.13.0+cpu", threads=threads, host="bench-1"), host=HostCondition(),
        flags=list(flags), details={}, samples_ms=samples if samples is not None else [],
    )


def levels(seed: int, values: list[tuple[int, float]], cv: float = 0.01) -> list[float]:
    """A noisy series: `values` is [(count, level), ...]."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    for count, level in values:
        out += list(level * (1 + cv * rng.standard_normal(count)))
    return out


def store_series(db: Database, p50s: list[float], start: int = 0, **kw: object) -> None:
    save_runs(db, [run(start + i, v, **kw) for i, v in enumerate(p50s)])  # type: ignore[arg-type]


def test_a_latency_step_is_one_open_regression_with_its_numbers(db: Database, loaded: LoadedConfig) -> None:
    store_series(db, levels(1, [(30, 1.0), (6, 1.2)]))
    result = check_model(db, loaded, MODEL, loaded.config.models[0])
    by_metric = {f.metric: f for f in result.findings}
    latency = by_metric["latency_ms_p50"]
    assert (latency.verdict, latency.change, latency.state) == ("regression", "up", "open")
    assert latency.rel_change == pytest.approx(0.2, abs=0.02)
    assert latency.before["low"] <= latency.before["median"] <= latency.before["high"]
    assert latency.before["median"] == pytest.approx(1.0, abs=0.01) and latency.after["runs"] == 6
    assert latency.change_at == T0 + timedelta(minutes=300)  # the 31st run: where the change began
    assert latency.p_value < 0.001
    # Throughput fell with it: down is the bad direction there, so it is a regression too.
    assert (by_metric["throughput_per_s"].verdict, by_metric["throughput_per_s"].change) == ("regression", "down")
    assert {f.id for f in result.new} == {f.id for f in result.findings}


def test_an_improvement_is_reported_as_one(db: Database, loaded: LoadedConfig) -> None:
    store_series(db, levels(2, [(30, 1.0), (6, 0.8)]))
    latency = next(f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "latency_ms_p50")
    assert (latency.verdict, latency.change) == ("improvement", "down")


def test_flat_history_gives_no_findings(db: Database, loaded: LoadedConfig) -> None:
    store_series(db, levels(3, [(60, 1.0)], cv=0.03))
    assert check_model(db, loaded, MODEL, None).findings == []


def test_empty_history_and_a_single_run(db: Database, loaded: LoadedConfig) -> None:
    assert check_model(db, loaded, MODEL, None).findings == []
    store_series(db, [1.0])
    assert check_model(db, loaded, MODEL, None).findings == []


def test_failed_runs_are_skipped_not_read_as_zero(db: Database, loaded: LoadedConfig) -> None:
    p50s = levels(4, [(40, 1.0)])
    save_runs(db, [run(i, v, status="failed" if i % 7 == 3 else "ok") for i, v in enumerate(p50s)])
    assert check_model(db, loaded, MODEL, None).findings == []


def test_contended_runs_are_excluded_by_default(db: Database, loaded: LoadedConfig, tmp_path: Path) -> None:
    p50s = levels(5, [(40, 1.0)])
    # The last four runs were slow because the host was busy, and were flagged as such.
    save_runs(db, [run(i, v * (1.5 if i >= 36 else 1.0), flags=(FLAG_CONTENDED,) if i >= 36 else ())
                   for i, v in enumerate(p50s)])
    assert check_model(db, loaded, MODEL, None).findings == []
    included = load_config(write_config(tmp_path / "inc.toml", [tiny_model(MODEL)],
                                        extra="[detection]\ncontended = \"include\"\nconfirm = false\n"))
    assert any(f.metric == "latency_ms_p50" for f in check_model(db, included, MODEL, None).findings)


def test_checking_again_updates_the_finding_instead_of_adding_one(db: Database, loaded: LoadedConfig) -> None:
    p50s = levels(6, [(30, 1.0), (20, 1.2)])
    store_series(db, p50s[:34])
    first = {f.metric: f for f in check_model(db, loaded, MODEL, None).findings}["latency_ms_p50"]
    store_series(db, p50s[34:], start=34)
    again = check_model(db, loaded, MODEL, None)
    latency = [f for f in again.findings if f.metric == "latency_ms_p50"]
    assert [f.id for f in latency] == [first.id] and again.new == []
    assert latency[0].last_seen > first.last_seen and latency[0].after["runs"] == 20
    assert latency[0].first_seen == first.first_seen


def test_a_regression_undone_is_resolved(db: Database, loaded: LoadedConfig) -> None:
    p50s = levels(7, [(30, 1.0), (10, 1.3), (12, 1.0)])
    store_series(db, p50s[:40])
    (open_one,) = [f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "latency_ms_p50"]
    store_series(db, p50s[40:], start=40)
    stored = {f.id: f for f in check_model(db, loaded, MODEL, None).findings}
    assert stored[open_one.id].state == "resolved" and stored[open_one.id].resolution == "no longer detected"


def test_an_environment_change_at_the_change_is_named_in_the_finding(db: Database, loaded: LoadedConfig) -> None:
    p50s = levels(8, [(30, 1.0), (6, 1.7)])
    save_runs(db, [run(i, v, threads=2 if i < 30 else 1) for i, v in enumerate(p50s)])
    result = check_model(db, loaded, MODEL, None)
    latency = next(f for f in result.findings if f.metric == "latency_ms_p50")
    assert latency.env_diff == {"threads": [2, 1]}
    assert result.env_changes == 1 and len(store.env_changes(db, MODEL)) == 1
    check_model(db, loaded, MODEL, None)
    assert len(store.env_changes(db, MODEL)) == 1  # annotations are stored once


def test_baseline_accept_makes_the_current_level_normal(db: Database, loaded: LoadedConfig) -> None:
    with pytest.raises(NoRunsError):
        accept(db, loaded, MODEL)
    p50s = levels(9, [(30, 1.0), (8, 1.25)])
    store_series(db, p50s)
    (finding,) = [f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "latency_ms_p50"]
    (segment,) = accept(db, loaded, MODEL, note="bigger model on purpose")
    assert segment.key == KEY and segment.runs == 8
    resolved = {f.id: f for f in store.findings(db, MODEL)}[finding.id]
    assert (resolved.state, resolved.resolution) == ("resolved", "baseline accepted")
    # More runs at the accepted level: nothing new. A step from it: a finding against the new level.
    store_series(db, levels(10, [(12, 1.25)]), start=38)
    assert [f for f in check_model(db, loaded, MODEL, None).findings if f.state == "open"] == []
    store_series(db, levels(11, [(5, 1.6)]), start=50)
    opened = [f for f in check_model(db, loaded, MODEL, None).findings if f.state == "open" and f.metric == "latency_ms_p50"]
    assert len(opened) == 1 and opened[0].before["median"] == pytest.approx(1.25, rel=0.02)


def test_the_newest_latency_change_is_confirmed_with_raw_samples(db: Database, loaded: LoadedConfig) -> None:
    rng = np.random.default_rng(12)
    p50s = levels(12, [(30, 1.0), (5, 1.3)])
    save_runs(db, [run(i, v, samples=list(v * (1 + 0.02 * rng.standard_normal(200)))) for i, v in enumerate(p50s)])
    latency = next(f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "latency_ms_p50")
    assert latency.samples is not None and latency.samples["confirmed"] is True
    low, high = latency.samples["interval"]
    assert 0.2 < low < high < 0.4


def finding(rel: float = 0.3, before: float = 1.0) -> FindingRecord:
    return FindingRecord(
        model=MODEL, key=KEY, metric="latency_ms_p50", change="up", verdict="regression", change_run_id=1,
        change_at=T0, before=Level.from_dict({"median": before}),
        after=Level.from_dict({"median": before * (1 + rel)}), rel_change=rel, p_value=1e-6,
    )


def test_ab_judgement_tells_model_from_environment() -> None:
    base = {"ratio": 1.02}  # the frozen copy ran 2 % slower than the live model when frozen
    # Only the current model got slower: the reference/current ratio fell by the regression.
    model = judge(finding(), base, {"reference": {"ratio_p50": 1.02 / 1.3, "ratio_ci95": [0.76, 0.8]}},
                  {"current": 1.3, "reference": 1.02}, 7, 0.05)
    assert model.cause == "model" and model.confirmation["model_change"] == pytest.approx(0.3, abs=0.01)
    # Both got slower alike: the ratio held and the reference itself is 30 % slower than before.
    env = judge(finding(), base, {"reference": {"ratio_p50": 1.02, "ratio_ci95": [0.99, 1.05]}},
                {"current": 1.3, "reference": 1.02 * 1.3}, 7, 0.05)
    assert env.cause == "environment" and env.confirmation["environment_change"] == pytest.approx(0.3, abs=0.01)
    # Nothing reproduces now (a transient): unknown, with the numbers kept.
    gone = judge(finding(), base, {"reference": {"ratio_p50": 1.02, "ratio_ci95": [0.99, 1.05]}},
                 {"current": 1.0, "reference": 1.02}, 7, 0.05)
    assert gone.cause == "unknown" and gone.confirmation["reference_id"] == 7
    assert judge(finding(), {}, {}, {}, 7, 0.05).cause == "unknown"


def test_a_big_code_change_is_the_models_even_when_its_copy_times_slow_beside_it() -> None:
    """An 11x regression, the model 5x slower than its copy, the copy itself 2x slower in that A/B:
    5x is more than half of 11x on the scale slowdowns compose on (4 is not half of 10)."""
    big = finding(rel=10.0)
    verdict = judge(big, {"ratio": 1.0}, {"reference": {"ratio_p50": 0.2, "ratio_ci95": [0.19, 0.21]}},
                    {"current": 11.0, "reference": 2.0}, 7, 0.05)
    assert verdict.cause == "model" and verdict.confirmation["model_change"] == pytest.approx(4.0)
    # Far short of half, whichever scale: 10 % of an 11x regression explains nothing; the copy, 10x
    # slower itself, explains the rest, so the host is to blame, with the model's 10 % on record.
    host = judge(big, {"ratio": 1.0}, {"reference": {"ratio_p50": 1 / 1.1, "ratio_ci95": [0.9, 0.92]}},
                 {"current": 11.0, "reference": 10.0}, 7, 0.05)
    assert host.cause == "environment" and host.confirmation["model_change"] == pytest.approx(0.1)


def test_a_small_but_certain_model_change_does_not_hide_a_slower_host() -> None:
    """The numbers of a CI run on a loaded 2-core host: the same model, the host 2.6x slower, and an A/B
    whose interval came out narrower than the noise (a 5.5 % model change, interval above zero)."""
    slow_host = finding(rel=59.576429 / 16.628207 - 1, before=16.628207)
    measured = {"ratio": 0.9957313824327113, "reference_p50_ms": 17.22}
    comparison = {"reference": {"ratio_p50": 0.9436189729577302, "ratio_ci95": [0.7039855835185291, 0.9931429947552602]}}
    verdict = judge(slow_host, measured, comparison, {"current": 64.134373, "reference": 45.149674}, 1, 0.05)
    assert verdict.cause == "environment", verdict.confirmation
    # The same model change is the whole story of a 6 % regression: not the host's.
    small = judge(finding(rel=0.06), {"ratio": 1.0}, {"reference": {"ratio_p50": 1 / 1.055, "ratio_ci95": [0.93, 0.96]}},
                  {"current": 1.06, "reference": 1.0}, 1, 0.05)
    assert small.cause == "model"


def test_check_and_baseline_commands(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL)], extra="[detection]\nconfirm = false\n")
    with Database.open(f"sqlite:///{tmp_path / 'perfguard.db'}") as db:
        store_series(db, levels(13, [(30, 1.0), (6, 1.4)]))
    out = perfguard("check", "--json", config=config)
    assert out.returncode == 0, out
    data = out.json()
    latency = next(f for f in data["findings"] if f["metric"] == "latency_ms_p50")
    assert latency["verdict"] == "regression" and latency["model"] == MODEL and latency["state"] == "open"
    assert set(data["new"]) == {f["id"] for f in data["findings"]}
    table = perfguard("check", config=config)
    assert "latency_ms_p50" in table.stdout and "regression" in table.stdout and "+39.4%" in table.stdout
    assert perfguard("check", "nope", config=config).returncode == 2
    accepted = perfguard("baseline", "accept", MODEL, "--json", config=config)
    assert accepted.returncode == 0, accepted
    assert accepted.json()["series"][0]["runs"] == 6
    assert perfguard("check", "--json", config=config).json()["findings"] == []
    everything = perfguard("check", "--json", "--all", config=config).json()["findings"]
    assert {f["resolution"] for f in everything} == {"baseline accepted"}


def test_bad_detection_config_names_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL, detection={"min_effect": {"latency": 0.1}})])
    out = perfguard("check", config=config)
    assert out.returncode == 2 and "models[0].detection.min_effect" in out.stderr and "latency_ms_p50" in out.stderr





def test_a_weights_only_reference_cannot_clear_the_models_code() -> None:
    both_slower = judge(finding(), {"ratio": 1.0}, {"reference": {"ratio_p50": 1.0, "ratio_ci95": [0.98, 1.02]}},
                        {"current": 1.3, "reference": 1.3}, 7, 0.05, kind="state_dict")
    assert both_slower.cause == "unknown" and "weights only" in both_slower.confirmation["why"]


def test_a_change_hovering_at_the_threshold_stays_one_finding(db: Database, loaded: LoadedConfig) -> None:
    """Checked after every run, a +6 % step in 3 % noise (min effect 5 %) is sometimes seen, sometimes
    not: it must stay one finding, not be resolved and opened again as a new one."""
    p50s = levels(9, [(40, 1.0), (30, 1.06)], cv=0.03)
    for i, value in enumerate(p50s):
        store_series(db, [value], start=i)
        if i >= 10:
            check_model(db, loaded, MODEL, None)
    latency = [f for f in store.findings(db, MODEL) if f.metric == "latency_ms_p50"]
    assert len(latency) == 1 and latency[0].state == "open"


def test_a_baseline_holds_for_runs_stored_late(db: Database, loaded: LoadedConfig) -> None:
    p50s = levels(14, [(30, 1.0), (20, 1.25)])
    store_series(db, p50s)
    check_model(db, loaded, MODEL, None)
    accept(db, loaded, MODEL)
    # Runs that started before the accepted segment but reached the database only now (a spool
    # flush after an outage): they have the newest ids, yet belong before the baseline.
    late = [dataclasses.replace(run(i, 1.0), started_at=T0 + timedelta(minutes=10 * i + 1)) for i in range(20, 30)]
    save_runs(db, late)
    assert [f for f in check_model(db, loaded, MODEL, None).findings if f.state == "open"] == []


def test_every_series_names_the_environment_change_even_behind_a_failed_run(db: Database, loaded: LoadedConfig) -> None:
    records = []
    for batch in (1, 8):
        for i, value in enumerate(levels(15 + batch, [(30, 1.0), (6, 1.6)])):
            status = "failed" if i == 30 else "ok"  # the first run with one thread failed
            record = run(i, value, threads=2 if i < 30 else 1, status=status)
            records.append(dataclasses.replace(record, batch_size=batch))
    save_runs(db, records)
    latency = [f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "latency_ms_p50"]
    assert sorted(f.key.batch_size for f in latency) == [1, 8]
    assert all(f.env_diff == {"threads": [2, 1]} for f in latency), [f.env_diff for f in latency]


def test_a_blip_and_the_real_step_after_it_are_two_findings(db: Database) -> None:
    """A +15 % blip found and gone, then a +70 % step four runs later: the step is a new finding (with
    its own A/B), not the blip's reopened with the blip's cause."""
    store_series(db, levels(17, [(40, 1.0)]))
    order = {run_id: run_id - 1 for run_id in range(1, 41)}
    checked = {(KEY, "latency_ms_p50", "absolute"): SeriesState(1.0, 0.05)}
    blip = dataclasses.replace(finding(rel=0.15), change_run_id=30)
    (stored,) = store.sync_findings(db, MODEL, [blip], checked, order)
    store.set_cause(db, stored.id, "environment", {"why": "the blip"})
    store.sync_findings(db, MODEL, [], checked, order)  # gone: resolved
    step = dataclasses.replace(finding(rel=0.7), change_run_id=34)
    after = {f.id: f for f in store.sync_findings(db, MODEL, [step], checked, order)}
    assert len(after) == 2 and after[stored.id].state == "resolved"
    (new,) = [f for f in after.values() if f.id != stored.id]
    assert new.cause is None and new.rel_change == 0.7
    # The same size again near the same runs is the same finding, reopened.
    again = dataclasses.replace(finding(rel=0.16), change_run_id=31)
    reopened = {f.id: f for f in store.sync_findings(db, MODEL, [again, step], checked, order)}
    assert len(reopened) == 2 and reopened[stored.id].state == "open"


def test_a_later_slowdown_is_judged_against_the_last_ab_not_the_freeze(db: Database, loaded: LoadedConfig) -> None:
    from monitor.detection.attribution import last_measurement

    store_series(db, levels(18, [(40, 1.0)]))
    key_ref = store.save_reference(db, MODEL, KEY, {"kind": "exported"}, {"ratio": 1.08, "reference_p50_ms": 1.0})
    reference = store.latest_reference(db, MODEL, KEY)
    assert reference is not None and reference.id == key_ref
    order = {run_id: run_id - 1 for run_id in range(1, 41)}
    checked = {(KEY, "latency_ms_p50", "absolute"): SeriesState(2.2, 0.05)}
    widened = dataclasses.replace(finding(rel=0.9), change_run_id=20, change_at=T0 + timedelta(minutes=200))
    later = dataclasses.replace(finding(rel=0.2, before=1.9), change_run_id=32, change_at=T0 + timedelta(minutes=320))
    first, second = sorted(store.sync_findings(db, MODEL, [widened, later], checked, order), key=lambda f: f.change_at)
    assert last_measurement(db, first, reference) == reference.measured  # nothing earlier: the freeze
    store.set_cause(db, first.id, "model", {"reference_id": reference.id, "ratio": 0.568,
                                            "reference_p50_ms": 1.02, "finding_id": first.id})
    baseline = last_measurement(db, second, reference)
    assert baseline["ratio"] == 0.568 and baseline["from_finding"] == first.id
    # The copy holds its ratio to the (already widened) model; it is the host that slowed down by 20 %.
    verdict = judge(second, baseline, {"reference": {"ratio_p50": 0.56, "ratio_ci95": [0.55, 0.57]}},
                    {"current": 2.28, "reference": 1.02 * 1.2}, reference.id, 0.05)
    assert verdict.cause == "environment", verdict


def test_each_finding_describes_its_own_segments(db: Database, loaded: LoadedConfig) -> None:
    store_series(db, levels(19, [(30, 1.0), (20, 1.2), (10, 1.5)]))
    latency = sorted((f for f in check_model(db, loaded, MODEL, None).findings if f.metric == "latency_ms_p50"),
                     key=lambda f: f.change_at)
    assert [round(f.before["median"], 1) for f in latency] == [1.0, 1.2]
    assert [round(f.after["median"], 1) for f in latency] == [1.2, 1.5]
    assert [f.after["runs"] for f in latency] == [20, 10]


def test_detection_reads_only_the_newest_runs_of_each_series(db: Database) -> None:
    records = [dataclasses.replace(run(i, 1.0 + i / 1000), batch_size=8 if i % 2 else 1) for i in range(60)]
    save_runs(db, records)
    runs = store.series_runs(db, MODEL, limit=10)
    by_batch = {b: [r for r in runs if r.key.batch_size == b] for b in (1, 8)}
    assert [len(v) for v in by_batch.values()] == [10, 10]
    # The newest ten of each, oldest first.
    assert [r.metrics["latency_ms_p50"] for r in by_batch[8]] == pytest.approx([1.0 + i / 1000 for i in range(41, 60, 2)])
    assert [r.started_at for r in runs] == sorted(r.started_at for r in runs)
