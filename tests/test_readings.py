"""Detection reads the right series, on SQLite and PostgreSQL: a model change in the drift-cancelled
relative reading, an environment change in the reference over the probe, a host slowdown as a host
event and never a model finding, and the probe-normalised fallback when the reference is lost."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from monitor.config import LoadedConfig, load_config
from monitor.core.runs import EnvFingerprint, HostCondition, RunMetrics, RunRecord
from monitor.core.series import SeriesKey
from monitor.detection.check import check_model, check_models
from storage import findings as store
from storage import host_events
from storage.db import Database
from storage.queries import history, register_model, save_runs
from tests.cli_helpers import tiny_model, write_config
from tests.storage_helpers import T0

MODEL = "m"
KEY = SeriesKey("baseline", "cpu", 8)
HOST = "bench-1"


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedConfig:
    extra = "[detection]\nconfirm = false\n"
    return load_config(write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL)], extra=extra))


def relative_run(
    i: int, *, model: float, host: float, env: float = 1.0, probe: float = 1.0, reference_id: int | None,
    threads: int = 2, rng: np.random.Generator,
) -> RunRecord:
    """A run whose live p50 is the product of the model's cost, the environment's and the host's
    (each a factor around 1), as a relative run measures it: the reference costs env x host, the
    probe costs the host's probe factor, and the ratio model/reference carries ±1 % noise."""
    started = T0 + timedelta(minutes=10 * i)
    reference = 2.0 * env * host * (1 + 0.01 * rng.standard_normal())
    rel = model * (1 + 0.01 * rng.standard_normal())
    p50 = rel * reference
    metrics = RunMetrics(
        latency_ms_p50=p50, latency_ms_p99=p50 * 1.2, throughput_per_s=8000 / p50,
        reference_p50_ms=reference if reference_id else None,
        reference_p99_ms=reference * 1.2 if reference_id else None,
        rel_to_reference=rel if reference_id else None, rel_p99_to_reference=rel if reference_id else None,
        probe_blas_ms=0.035 * probe * (1 + 0.005 * rng.standard_normal()), probe_python_ms=0.05 * probe,
    )
    return RunRecord(
        model=MODEL, variant="baseline", device="cpu", batch_size=8, status="ok", started_at=started,
        finished_at=started + timedelta(seconds=3), metrics=metrics,
        env=EnvFingerprint(torch="2.13.0+cpu", threads=threads, host=HOST, math_env={}), host=HostCondition(),
        reference_id=reference_id,
    )


def frozen(db: Database, reference_p50: float = 2.0) -> int:
    """A stored reference of the series, as a freeze records it."""
    with db.session() as session:
        register_model(session, MODEL, "workloads:tiny", "cpu")
    return store.save_reference(db, MODEL, KEY, {"kind": "exported", "path": "/nowhere", "sha256": "0"},
                                {"ratio": 1.0, "reference_p50_ms": reference_p50,
                                 "reference_p99_ms": reference_p50 * 1.2, "probe_blas_ms": 0.035})


def drifting_host(count: int, seed: int) -> np.ndarray:
    """A shared host's speed factor: stretches 30-45 % slower now and then, as measured here."""
    rng = np.random.default_rng(seed)
    factor = np.ones(count)
    for start in rng.choice(count - 4, size=count // 8, replace=False):
        factor[start : start + rng.integers(2, 5)] = 1 + rng.uniform(0.3, 0.45)
    return factor


def store_runs(db: Database, reference_id: int | None, model: list[float], host: list[float] | np.ndarray,
               env: list[float] | None = None, probe: list[float] | None = None, threads: list[int] | None = None,
               seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = len(model)
    save_runs(db, [
        relative_run(i, model=model[i], host=float(host[i]), env=(env or [1.0] * n)[i], probe=(probe or [1.0] * n)[i],
                     threads=(threads or [2] * n)[i], reference_id=reference_id, rng=rng)
        for i in range(n)
    ])


def test_relative_readings_are_stored_and_read_back(db: Database) -> None:
    save_runs(db, [relative_run(0, model=1.0, host=1.0, reference_id=frozen(db), rng=np.random.default_rng(0))])
    (record,) = history(db, MODEL)
    m = record.metrics
    assert record.reference_id == store.latest_reference(db, MODEL, KEY).id
    assert m.rel_to_reference == pytest.approx(1.0, abs=0.05) and m.reference_p50_ms == pytest.approx(2.0, rel=0.05)
    assert m.probe_blas_ms == pytest.approx(0.035, rel=0.05) and m.probe_python_ms == pytest.approx(0.05)
    (run,) = store.series_runs(db, MODEL, 10)
    assert run.reference_id == record.reference_id and run.metrics["rel_to_reference"] == m.rel_to_reference


def test_a_model_regression_is_found_at_its_true_size_on_a_drifting_host(db: Database, loaded: LoadedConfig) -> None:
    """+8 % on the model while the host drifts by up to 45 %: the absolute p50 would report the
    drift; the relative reading finds the model's +8 %, cause model, with both levels."""
    count = 40
    store_runs(db, frozen(db), [1.0] * 20 + [1.08] * 20, drifting_host(count, seed=3))
    result = check_model(db, loaded, MODEL, loaded.config.models[0])
    latency = [f for f in result.findings if f.metric == "latency_ms_p50" and f.verdict == "regression"]
    assert len(latency) == 1, [(f.metric, f.reading, f.rel_change) for f in result.findings]
    (finding,) = latency
    assert (finding.reading, finding.cause, finding.state) == ("relative", "model", "open")
    assert finding.rel_change == pytest.approx(0.08, abs=0.015)
    assert finding.change_run_id == history(db, MODEL, limit=count)[count - 21].run_id  # the 21st run
    levels = finding.confirmation
    assert levels["reading"] == "relative"
    assert levels["ratio_after"] / levels["ratio_before"] == pytest.approx(1.08, abs=0.02)
    assert levels["absolute_p50_ms_before"] is not None and levels["absolute_p50_ms_after"] is not None
    # Reading relatively leaves nothing for the absolute p50 to report.
    assert not [f for f in result.findings if f.reading == "absolute" and f.metric.startswith("latency")]


def test_the_same_history_read_absolutely_raises_false_alarms(db: Database, loaded: LoadedConfig) -> None:
    """The control: the same drifting host without a reference to cancel it; a test of the reading
    that could not fail would prove nothing."""
    store_runs(db, None, [1.0] * 40, np.r_[np.ones(20), np.full(20, 1.4)])
    result = check_model(db, loaded, MODEL, loaded.config.models[0])
    assert [f for f in result.findings if f.metric == "latency_ms_p50" and f.reading == "absolute"]


def test_a_host_slowdown_is_a_host_event_and_no_finding(db: Database, loaded: LoadedConfig) -> None:
    """The host gets 40 % slower for good (the probe too): no model finding, and a host event for
    the probe, shown per host."""
    host = [1.0] * 20 + [1.4] * 20
    store_runs(db, frozen(db), [1.0] * 40, host, probe=host)
    result = check_models(db, loaded, [MODEL])
    assert not [f for f in result.findings if f.metric.startswith("latency") or f.metric == "throughput_per_s"]
    signals = {e.signal: e for e in result.host_events}
    assert signals["probe_blas_ms"].change == "up"
    assert signals["probe_blas_ms"].rel_change == pytest.approx(0.4, abs=0.05)
    assert signals["probe_blas_ms"].host == HOST
    assert host_events.open_event_counts(db) == {HOST: len(result.host_events)}


def test_the_reference_slowing_without_an_environment_change_is_the_host(db: Database, loaded: LoadedConfig) -> None:
    """The model and its frozen copy both 30 % slower, the probe unmoved and no environment change:
    the host (its memory, its neighbours) slowed this model down, not the model itself."""
    store_runs(db, frozen(db), [1.0] * 40, [1.0] * 20 + [1.3] * 20)
    result = check_models(db, loaded, [MODEL])
    assert not [f for f in result.findings if f.verdict == "regression"]
    (event,) = result.host_events
    assert event.signal == f"{MODEL} {KEY.label()} reference" and event.rel_change == pytest.approx(0.3, abs=0.04)


def test_an_environment_change_is_found_on_the_reference_with_the_env_diff(db: Database, loaded: LoadedConfig) -> None:
    """Fewer threads make the model and its copy 60 % slower alike; the probe (one thread) does not
    move: the reference over the probe shows it, with the thread count in the diff."""
    store_runs(db, frozen(db), [1.0] * 40, [1.0] * 40, env=[1.0] * 20 + [1.6] * 20, threads=[2] * 20 + [1] * 20)
    result = check_model(db, loaded, MODEL, loaded.config.models[0])
    (finding,) = [f for f in result.findings if f.verdict == "regression"]
    assert (finding.metric, finding.reading, finding.cause) == ("latency_ms_p50", "reference", "environment")
    assert finding.env_diff == {"threads": [2, 1]}
    assert finding.rel_change == pytest.approx(0.6, abs=0.05)


def test_a_lost_reference_falls_back_to_probe_normalised_readings(db: Database, loaded: LoadedConfig) -> None:
    reference_id = frozen(db)
    assert store.mark_reference_lost(db, reference_id, "the copy no longer loads")
    assert not store.mark_reference_lost(db, reference_id, "again")  # recorded once
    lost = store.latest_reference(db, MODEL, KEY)
    assert lost.lost_at is not None and lost.lost_reason == "the copy no longer loads"
    # Runs now measure absolutely; the model gets 20 % slower while the probe says the host did not.
    store_runs(db, None, [1.0] * 20 + [1.2] * 20, [1.0] * 40)
    result = check_model(db, loaded, MODEL, loaded.config.models[0])
    (finding,) = [f for f in result.findings if f.metric == "latency_ms_p50"]
    assert finding.reading == "normalised" and finding.cause is None
    assert finding.rel_change == pytest.approx(0.2, abs=0.03)


def test_the_report_shows_the_relative_reading_its_cause_and_the_host_events(tmp_path: Path) -> None:
    from monitor.service.reporting import write_report

    loaded = load_config(write_config(tmp_path / "perfguard.toml", [tiny_model(MODEL)],
                                      storage_url=f"sqlite:///{tmp_path / 'perfguard.db'}",
                                      extra='[detection]\nconfirm = false\n[reports]\nout_dir = "site"\nworkers = 1\n'))
    with Database.open(loaded.storage_url()) as db:
        # The model 10 % slower from run 21, the host 40 % slower from run 31 (the probe with it).
        host = [1.0] * 30 + [1.4] * 12
        store_runs(db, frozen(db), [1.0] * 20 + [1.1] * 22, host, probe=host)
        check_models(db, loaded, [MODEL])
        site = write_report(db, loaded)
    index, page = site.index.read_text(), site.pages[MODEL].read_text()
    assert "Host events" in index and HOST in index and "probe_blas_ms" in index
    assert "Against the frozen reference (host drift cancelled)" in page and "Host-speed probe" in page
    assert "model: against its frozen reference 0.99" in page or "model: against its frozen reference 1.00" in page
    assert "→ 1.10" in page and "(as measured, p50 " in page  # both levels
    assert "Host events" in page


def test_metrics_export_the_relative_ratio_the_probe_and_the_host_events() -> None:
    from prometheus_client import generate_latest

    from monitor.service.http import RunMetricsExporter

    exporter = RunMetricsExporter()
    exporter.observe(relative_run(0, model=1.05, host=1.0, reference_id=3, rng=np.random.default_rng(0)))
    exporter.observe_host_events({HOST: 2, "bench-2": 0})
    text = generate_latest(exporter.registry).decode()
    series = f'batch_size="8",concurrency="1",device="cpu",mode="infer",model="{MODEL}",variant="baseline"'
    assert f"perfguard_relative_latency_ratio{{{series}}} 1.0" in text
    assert f'perfguard_host_probe_seconds{{host="{HOST}",probe="blas"}} 3.' in text  # ~0.035 ms, in seconds
    assert f'perfguard_open_host_events{{host="{HOST}"}} 2.0' in text
    assert 'perfguard_open_host_events{host="bench-2"} 0.0' in text


def test_a_busy_neighbour_is_a_host_event_even_where_the_probe_runs_untouched(
    db: Database, loaded: LoadedConfig
) -> None:
    """A CPU hog on one core of two: the model's runs are contended (left out of its readings), the
    one-thread probe runs on the free core at its usual speed; others' CPU use says what happened."""
    reference_id = frozen(db)
    rng = np.random.default_rng(0)
    runs = [relative_run(i, model=1.0, host=1.0, reference_id=reference_id, rng=rng) for i in range(40)]
    for i, run in enumerate(runs):
        busy = i >= 30
        host = HostCondition(others_cpu_pct=100.0 + rng.uniform(-3, 3) if busy else rng.uniform(0, 4))
        runs[i] = dataclasses.replace(run, host=host, flags=["contended"] if busy else run.flags)
    save_runs(db, runs)
    result = check_models(db, loaded, [MODEL])
    assert not [f for f in result.findings if f.verdict == "regression"]
    (event,) = result.host_events
    assert event.signal == "others_cpu_pct" and event.change == "up" and event.after["median"] > 90


def test_an_environment_change_is_tested_where_it_happened_even_in_a_bimodal_series(
    db: Database, loaded: LoadedConfig
) -> None:
    """The model's process flips between a fast and a 40 % slower state from run to run (as the MLP
    does here); a thread change makes its copy 60 % slower from run 25 on. A scan over every split
    drowns in the flips; one test at the run where the environment changed finds it."""
    rng = np.random.default_rng(7)
    host = np.where(rng.random(30) < 0.5, 1.0, 1.4)
    store_runs(db, frozen(db), [1.0] * 30, host, env=[1.0] * 25 + [1.6 * 1.4] * 5, threads=[2] * 25 + [1] * 5)
    result = check_model(db, loaded, MODEL, loaded.config.models[0])
    (finding,) = [f for f in result.findings if f.verdict == "regression"]
    assert (finding.reading, finding.cause, finding.env_diff) == ("reference", "environment", {"threads": [2, 1]})
    assert finding.change_run_id == history(db, MODEL, limit=30)[4].run_id  # the 26th run, where it changed
