"""Storage on PostgreSQL (psycopg 3), as shared services use it: the same guarantees as on SQLite.

Each test gets its own schema on the server of PERFGUARD_TEST_PG_URL, and a session time zone far
from UTC (see conftest.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, select

from storage.db import Database
from storage.models import RunRow, RunSamplesRow
from storage.queries import (
    active_variant,
    history,
    latency_trend,
    list_models,
    load_samples,
    register_model,
    save_run,
)
from storage.records import FLAG_UNSTABLE, EnvFingerprint, HostCondition, RunMetrics, RunRecord

pytestmark = pytest.mark.postgres

CEST = timezone(timedelta(hours=2))


def pg_record(minute: int = 0, batch_size: int = 8) -> RunRecord:
    """A GPU run with every part filled, its times given in a non-UTC zone."""
    started = datetime(2026, 11, 22, 12, minute, 5, 654321, tzinfo=CEST)
    return RunRecord(
        model="bert-base",
        variant="baseline",
        device="cuda:0",
        batch_size=batch_size,
        status="ok",
        started_at=started,
        finished_at=started + timedelta(seconds=30),
        metrics=RunMetrics(
            latency_ms_p50=6.5 + minute, latency_ms_p90=6.9, latency_ms_p99=13.1, samples=4,
            cuda_peak_mem_mb=1830.5, gpu_util_pct=97.0, gpu_power_w=350.2, energy_j_per_inference=0.07,
        ),  # fmt: skip
        env=EnvFingerprint(torch="2.11.0", gpu="NVIDIA H100", gpu_driver="570.1", cuda="12.8"),
        host=HostCondition(loadavg_1m=1.5, contended_blocks=0),
        flags=[FLAG_UNSTABLE],
        details={"timer": "cuda_events", "note": "ünïcödé ✓"},
        samples_ms=[6.4, 6.5, 6.6, 13.1],
    )


def test_full_run_round_trips_with_samples_and_utc_times(pg_db: Database) -> None:
    record = pg_record()
    run_id = save_run(pg_db, record)

    (loaded,) = history(pg_db, "bert-base", with_samples=True)
    assert loaded == record
    assert loaded.started_at.tzinfo == UTC and loaded.finished_at.tzinfo == UTC
    assert loaded.started_at == datetime(2026, 11, 22, 10, 0, 5, 654321, tzinfo=UTC)
    assert load_samples(pg_db, run_id) == record.samples_ms


def test_failed_run_keeps_its_error_and_has_no_metrics(pg_db: Database) -> None:
    started = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    failed = RunRecord(
        model="bert-base", variant="baseline", device="cuda:0", batch_size=8, status="timeout",
        started_at=started, finished_at=started + timedelta(minutes=10), error="no result in 600 s",
    )  # fmt: skip
    run_id = save_run(pg_db, failed)

    assert history(pg_db, "bert-base") == [failed]
    assert load_samples(pg_db, run_id) == []


def test_history_and_trend_order_limit_and_filter(pg_db: Database) -> None:
    records = [pg_record(minute=m, batch_size=1 if m % 2 else 8) for m in (2, 0, 4, 1, 3)]
    for record in records:
        save_run(pg_db, record)

    assert [r.started_at.minute for r in history(pg_db, "bert-base", limit=2)] == [4, 3]
    assert [r.started_at.minute for r in history(pg_db, "bert-base", batch_size=8)] == [4, 2, 0]
    trend = latency_trend(pg_db, "bert-base", batch_size=8, limit=2)
    assert [p.latency_ms_p50 for p in trend] == [8.5, 10.5]


def test_a_run_that_fails_mid_write_leaves_nothing(pg_db: Database) -> None:
    kept = pg_record()
    save_run(pg_db, kept)

    def disk_full(*_args: object) -> None:
        raise OSError("disk full")

    event.listen(RunSamplesRow, "before_insert", disk_full)
    try:
        with pytest.raises(OSError, match="disk full"):
            save_run(pg_db, pg_record(minute=1))
    finally:
        event.remove(RunSamplesRow, "before_insert", disk_full)

    with pg_db.session(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(RunRow)) == 1
        assert session.scalar(select(func.count()).select_from(RunSamplesRow)) == 1
    assert history(pg_db, "bert-base", with_samples=True) == [kept]


def test_registering_a_model_twice_keeps_one_row_and_an_active_baseline(pg_db: Database) -> None:
    with pg_db.session() as session:
        first = register_model(session, "bert-base", "models:bert", "cuda:0")
    with pg_db.session() as session:
        assert register_model(session, "bert-base", "models:bert_v2", "cuda:1") == first
        assert active_variant(session, "bert-base") == "baseline"

    (model,) = list_models(pg_db)
    assert (model.factory, model.device, model.active_variant) == ("models:bert_v2", "cuda:1", "baseline")
