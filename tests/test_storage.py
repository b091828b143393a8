"""Storage on every backend (SQLite file and PostgreSQL, see `db` in conftest.py): runs round-trip
whole, history reads right, failed writes leave nothing, variants stay consistent.

What only one backend does is tested in test_storage_sqlite.py and test_storage_postgres.py.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, inspect, select
from sqlalchemy.exc import IntegrityError
from storage_helpers import T0, full_record, saved

from monitor.core.runs import FLAG_CONTENDED, RunMetrics, RunRecord, RunStatus
from storage.db import Database
from storage.queries import (
    active_variant,
    add_variant,
    history,
    latency_trend,
    list_models,
    load_samples,
    register_model,
    save_run,
    save_runs,
    set_active_variant,
)
from storage.samples import decode_samples, encode_samples
from storage.tables import ModelRow, RunMetricsRow, RunRow, RunSamplesRow, VariantRow


def row_counts(db: Database) -> dict[str, int]:
    with db.session(readonly=True) as session:
        return {
            entity.__tablename__: session.scalar(select(func.count()).select_from(entity)) or 0
            for entity in (ModelRow, VariantRow, RunRow, RunMetricsRow, RunSamplesRow)
        }


def test_full_run_round_trips_with_samples_and_utc_times(db: Database) -> None:
    record = full_record()
    run_id = save_run(db, record)

    (loaded,) = history(db, "seed-cnn", with_samples=True)
    assert loaded == dataclasses.replace(record, run_id=run_id)
    assert loaded.started_at.tzinfo == UTC and loaded.finished_at.tzinfo == UTC
    assert load_samples(db, run_id) == record.samples_ms


def test_times_given_in_another_zone_come_back_as_the_same_instant_in_utc(db: Database) -> None:
    record = dataclasses.replace(
        full_record(), started_at=datetime(2026, 11, 22, 12, 0, 5, 654321, tzinfo=timezone(timedelta(hours=2)))
    )
    save_run(db, record)

    (loaded,) = history(db, "seed-cnn")
    assert loaded.started_at == datetime(2026, 11, 22, 10, 0, 5, 654321, tzinfo=UTC)
    assert loaded.started_at.tzinfo == UTC


def test_naive_times_are_refused_and_nothing_is_stored(db: Database) -> None:
    record = dataclasses.replace(full_record(), started_at=datetime(2026, 11, 22, 10, 0))

    with pytest.raises(Exception, match="naive datetime"):
        save_run(db, record)
    assert row_counts(db)["runs"] == 0


@pytest.mark.parametrize(
    ("status", "error"),
    [("failed", "RuntimeError: CUDA out of memory"), ("timeout", "no result in 600 s")],
    ids=["failed", "timeout"],
)
def test_failed_run_keeps_its_error_and_has_no_metrics_or_samples(
    db: Database, status: RunStatus, error: str
) -> None:
    failed = RunRecord(
        model="seed-cnn", variant="baseline", device="cpu", batch_size=32, status=status,
        started_at=T0, finished_at=T0 + timedelta(minutes=10), error=error,
    )  # fmt: skip
    run_id = save_run(db, failed)
    failed = dataclasses.replace(failed, run_id=run_id)

    assert history(db, "seed-cnn") == [failed]
    (loaded,) = history(db, "seed-cnn", with_samples=True)
    assert loaded == failed
    assert loaded.status == status and loaded.error == error
    assert loaded.metrics == RunMetrics()
    assert load_samples(db, run_id) == []


def test_history_is_newest_first_limited_and_filtered_by_batch_size(db: Database) -> None:
    # Saved out of time order, some in one batch and some one by one, as runs from several workers arrive.
    records = [full_record(minute=m, batch_size=1 if m % 2 else 32) for m in (3, 0, 5, 1, 4, 2)]
    save_runs(db, records[:3])
    for record in records[3:]:
        save_run(db, record)
    save_run(db, full_record("other-model", minute=9))

    assert [r.started_at for r in history(db, "seed-cnn", limit=3)] == [
        T0 + timedelta(minutes=m) for m in (5, 4, 3)
    ]
    assert [r.started_at.minute for r in history(db, "seed-cnn", batch_size=32)] == [4, 2, 0]
    assert all(r.samples_ms == [] for r in history(db, "seed-cnn"))
    assert history(db, "no-such-model") == []


def test_runs_with_equal_start_times_keep_a_stable_newest_first_order(db: Database) -> None:
    first, second = saved(db, [full_record(), full_record()])

    assert [r.run_id for r in history(db, "seed-cnn")] == [second.run_id, first.run_id]


def test_latency_trend_is_a_light_oldest_first_series_of_one_batch_size(db: Database) -> None:
    records = [full_record(minute=m) for m in range(5)]
    records[2] = dataclasses.replace(records[2], flags=[FLAG_CONTENDED])
    records = saved(db, records)
    save_run(db, full_record(minute=9, batch_size=1))

    trend = latency_trend(db, "seed-cnn", batch_size=32, limit=3)
    assert [p.run_id for p in trend] == [r.run_id for r in records[2:]]
    assert [p.latency_ms_p50 for p in trend] == [r.metrics.latency_ms_p50 for r in records[2:]]
    assert trend[0].flags == (FLAG_CONTENDED,)
    assert trend[0].variant == "baseline" and trend[0].status == "ok"
    assert trend[-1].latency_ms_p50 == records[-1].metrics.latency_ms_p50
    assert trend[-1].started_at == records[-1].started_at and trend[-1].started_at.tzinfo == UTC


def test_a_run_that_fails_mid_write_leaves_nothing_and_earlier_runs_untouched(db: Database) -> None:
    [kept] = saved(db, [full_record()])
    before = row_counts(db)
    assert (before["runs"], before["run_samples"]) == (1, 1)
    runs_seen_mid_write: list[int] = []

    def disk_full(_mapper: object, connection, _target: object) -> None:  # type: ignore[no-untyped-def]
        # The run and metrics rows of the doomed run are already written in this transaction.
        runs_seen_mid_write.append(connection.scalar(select(func.count()).select_from(RunRow)))
        raise OSError("disk full")

    doomed = full_record("brand-new-model", minute=1)
    event.listen(RunSamplesRow, "before_insert", disk_full)
    try:
        with pytest.raises(OSError, match="disk full"):
            save_run(db, doomed)
    finally:
        event.remove(RunSamplesRow, "before_insert", disk_full)

    assert runs_seen_mid_write == [before["runs"] + 1]
    assert row_counts(db) == before  # not even the new model or its baseline variant
    assert history(db, "seed-cnn", with_samples=True) == [kept]


def test_saving_an_already_stored_record_again_is_refused(db: Database) -> None:
    [record] = saved(db, [full_record()])

    with pytest.raises(ValueError, match="already stored"):
        save_run(db, record)


def test_reopening_an_existing_database_keeps_its_runs(db_url: str) -> None:
    with Database.open(db_url) as db:
        [record] = saved(db, [full_record()])

    with Database.open(db_url) as db:
        assert history(db, "seed-cnn", with_samples=True) == [record]


def test_registered_model_gets_an_active_baseline_and_updates_in_place(db: Database) -> None:
    with db.session() as session:
        model_id = register_model(session, "seed-cnn", "monitor.examples.models:seed_cnn", "cpu")
    with db.session() as session:
        assert register_model(session, "seed-cnn", "monitor.examples.models:seed_cnn_v2", "cuda") == model_id
        assert active_variant(session, "seed-cnn") == "baseline"

    (model,) = list_models(db)
    assert (model.name, model.factory, model.device) == ("seed-cnn", "monitor.examples.models:seed_cnn_v2", "cuda")
    assert model.active_variant == "baseline"
    assert model.updated_at > model.created_at


def test_switching_the_active_variant_keeps_exactly_one_active(db: Database) -> None:
    with db.session() as session:
        register_model(session, "seed-cnn", "monitor.examples.models:seed_cnn", "cpu")
        add_variant(
            session, "seed-cnn", "int8", "quantize_static",
            artifact_path="/artifacts/seed-cnn-int8.pt", params={"backend": "x86"}, parent="baseline",
        )  # fmt: skip
        set_active_variant(session, "seed-cnn", "int8")
    with db.session() as session:
        assert active_variant(session, "seed-cnn") == "int8"
        active = session.scalars(select(VariantRow.name).where(VariantRow.is_active)).all()
        assert active == ["int8"]
        int8 = session.scalars(select(VariantRow).where(VariantRow.name == "int8")).one()
        assert int8.params == {"backend": "x86"} and int8.parent_id is not None


def test_the_database_itself_refuses_a_second_active_variant(db: Database) -> None:
    with db.session() as session:
        model_id = register_model(session, "seed-cnn", "monitor.examples.models:seed_cnn", "cpu")

    with pytest.raises(IntegrityError), db.session() as session:
        session.add(VariantRow(model_id=model_id, name="fp16", kind="autocast", is_active=True))


def test_a_run_of_an_unknown_variant_is_kept_under_an_inactive_unregistered_variant(
    db: Database,
) -> None:
    record = dataclasses.replace(full_record(), variant="int8-candidate")
    save_run(db, record)

    with db.session() as session:
        assert active_variant(session, "seed-cnn") == "baseline"
        kinds = {name: kind for name, kind in session.execute(select(VariantRow.name, VariantRow.kind))}
    assert kinds == {"baseline": "baseline", "int8-candidate": "unregistered"}
    assert history(db, "seed-cnn")[0].variant == "int8-candidate"


def test_concurrent_writers_and_readers_lose_no_run(db: Database) -> None:
    def write(worker: int) -> None:
        for i in range(20):
            save_run(db, full_record(f"model-{worker % 2}", minute=i))
            history(db, f"model-{worker % 2}", limit=5)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(4)))

    assert row_counts(db)["runs"] == 80


# Checks of the schema and the samples encoding themselves: no database needed.


def test_metrics_table_has_one_column_per_run_metrics_field() -> None:
    columns = {c.key for c in inspect(RunMetricsRow).columns} - {"run_id"}
    assert columns == {f.name for f in dataclasses.fields(RunMetrics)}


def test_samples_blob_is_exact_and_smaller_than_raw_floats() -> None:
    values = [0.41 + (i % 17) * 1e-4 for i in range(5000)]
    encoded = encode_samples(values)

    assert decode_samples(encoded) == values
    assert encoded.count == 5000
    assert len(encoded.data) < 8 * len(values) / 2
