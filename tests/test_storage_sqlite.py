"""Storage on SQLite, the default: runs round-trip whole, history reads right, failed writes leave nothing."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.exc import IntegrityError

from storage.db import Database
from storage.models import ModelRow, RunMetricsRow, RunRow, RunSamplesRow, VariantRow
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
from storage.records import (
    FLAG_CONTENDED,
    FLAG_UNSTABLE,
    EnvFingerprint,
    HostCondition,
    RunMetrics,
    RunRecord,
)
from storage.samples import decode_samples, encode_samples

T0 = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def full_record(model: str = "seed-cnn", *, minute: int = 0, batch_size: int = 32) -> RunRecord:
    """A run with every part filled, so that a lost or mangled field shows in a comparison."""
    started = T0 + timedelta(minutes=minute)
    return RunRecord(
        model=model,
        variant="baseline",
        device="cpu",
        batch_size=batch_size,
        status="ok",
        started_at=started,
        finished_at=started + timedelta(seconds=4, microseconds=250),
        metrics=RunMetrics(
            latency_ms_p50=0.41 + minute / 1000, latency_ms_p90=0.44, latency_ms_p99=0.52,
            latency_ms_mean=0.42, latency_ms_std=0.02, latency_ms_min=0.39, latency_ms_max=0.9,
            ci95_rel=0.004, samples=5, throughput_per_s=78000.0, peak_rss_mb=310.2,
            model_size_mb=0.61, params=152330, accuracy=0.975,
        ),  # fmt: skip
        env=EnvFingerprint(
            torch="2.13.0+cpu", python="3.11.7", cpu="Xeon", cpu_count=2, cpu_flags=["avx512f", "amx"],
            threads=2, interop_threads=1, host="bench-1", platform="Linux",
            allocator={"MALLOC_MMAP_THRESHOLD_": "65536"},
        ),  # fmt: skip
        host=HostCondition(loadavg_1m=0.25, others_cpu_pct=3.5, cpu_freq_mhz=2600.0, contended_blocks=1),
        flags=[FLAG_CONTENDED, FLAG_UNSTABLE],
        details={"warmup": {"iterations": 50, "settled": True}, "stop_reason": "ci_reached"},
        samples_ms=[0.41, 0.4100000000000001, 0.39, 0.9, 1e-9],
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(f"sqlite:///{tmp_path / 'perfguard.db'}")
    yield db
    db.close()


def row_counts(db: Database) -> dict[str, int]:
    with db.session(readonly=True) as session:
        return {
            entity.__tablename__: session.scalar(select(func.count()).select_from(entity)) or 0
            for entity in (ModelRow, VariantRow, RunRow, RunMetricsRow, RunSamplesRow)
        }


def test_full_run_round_trips_with_samples_and_utc_times(db: Database) -> None:
    record = full_record()
    run_id = save_run(db, record)

    assert record.run_id == run_id
    (loaded,) = history(db, "seed-cnn", with_samples=True)
    assert loaded == record
    assert loaded.started_at.tzinfo == UTC and loaded.finished_at.tzinfo == UTC
    assert load_samples(db, run_id) == record.samples_ms


def test_times_given_in_another_zone_come_back_as_the_same_instant_in_utc(db: Database) -> None:
    record = full_record()
    record.started_at = datetime(2026, 11, 22, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    save_run(db, record)

    (loaded,) = history(db, "seed-cnn")
    assert loaded.started_at == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert loaded.started_at.tzinfo == UTC


def test_naive_times_are_refused_and_nothing_is_stored(db: Database) -> None:
    record = full_record()
    record.started_at = datetime(2026, 11, 22, 10, 0)

    with pytest.raises(Exception, match="naive datetime"):
        save_run(db, record)
    assert record.run_id is None
    assert row_counts(db)["runs"] == 0


def test_failed_run_keeps_its_error_and_has_no_metrics_or_samples(db: Database) -> None:
    failed = RunRecord(
        model="seed-cnn", variant="baseline", device="cpu", batch_size=32, status="failed",
        started_at=T0, finished_at=T0 + timedelta(seconds=1), error="RuntimeError: CUDA out of memory",
    )  # fmt: skip
    run_id = save_run(db, failed)

    (loaded,) = history(db, "seed-cnn", with_samples=True)
    assert loaded == failed
    assert loaded.status == "failed" and loaded.error == "RuntimeError: CUDA out of memory"
    assert loaded.metrics == RunMetrics()
    assert load_samples(db, run_id) == []


def test_history_is_newest_first_limited_and_filtered_by_batch_size(db: Database) -> None:
    # Saved out of time order, as runs from several workers can arrive.
    records = [full_record(minute=m, batch_size=1 if m % 2 else 32) for m in (3, 0, 5, 1, 4, 2)]
    save_runs(db, records)
    save_run(db, full_record("other-model", minute=9))

    assert [r.started_at for r in history(db, "seed-cnn", limit=3)] == [
        T0 + timedelta(minutes=m) for m in (5, 4, 3)
    ]
    assert [r.started_at.minute for r in history(db, "seed-cnn", batch_size=32)] == [4, 2, 0]
    assert all(r.samples_ms == [] for r in history(db, "seed-cnn"))
    assert history(db, "no-such-model") == []


def test_runs_with_equal_start_times_keep_a_stable_newest_first_order(db: Database) -> None:
    first, second = full_record(), full_record()
    save_runs(db, [first, second])

    assert [r.run_id for r in history(db, "seed-cnn")] == [second.run_id, first.run_id]


def test_latency_trend_is_a_light_oldest_first_series_of_one_batch_size(db: Database) -> None:
    records = [full_record(minute=m) for m in range(5)]
    records[2].flags = [FLAG_CONTENDED]
    save_runs(db, records)
    save_run(db, full_record(minute=9, batch_size=1))

    trend = latency_trend(db, "seed-cnn", batch_size=32, limit=3)
    assert [p.run_id for p in trend] == [r.run_id for r in records[2:]]
    assert trend[0].flags == (FLAG_CONTENDED,)
    assert trend[0].variant == "baseline" and trend[0].status == "ok"
    assert trend[-1].latency_ms_p50 == records[-1].metrics.latency_ms_p50
    assert trend[-1].started_at == records[-1].started_at and trend[-1].started_at.tzinfo == UTC


def test_a_run_that_fails_mid_write_leaves_nothing_and_earlier_runs_untouched(db: Database) -> None:
    kept = full_record()
    save_run(db, kept)
    before = row_counts(db)
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
    assert doomed.run_id is None
    assert row_counts(db) == before  # not even the new model or its baseline variant
    assert history(db, "seed-cnn", with_samples=True) == [kept]


def test_saving_an_already_stored_record_again_is_refused(db: Database) -> None:
    record = full_record()
    save_run(db, record)

    with pytest.raises(ValueError, match="already stored"):
        save_run(db, record)


def test_reopening_an_existing_database_keeps_its_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'perfguard.db'}"
    record = full_record()
    with Database.open(url) as db:
        save_run(db, record)

    with Database.open(url) as db:
        assert history(db, "seed-cnn", with_samples=True) == [record]


def test_file_and_missing_directories_are_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "does" / "not" / "exist" / "perfguard.db"
    with Database.open(f"sqlite:///{path}") as db:
        assert path.is_file()
        assert db.display_location() == str(path)
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_relative_sqlite_path_is_taken_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Database.open("sqlite:///data/perfguard.db") as db:
        assert db.display_location() == str(tmp_path / "data" / "perfguard.db")
    assert (tmp_path / "data" / "perfguard.db").is_file()


def test_server_location_is_shown_without_its_password() -> None:
    db = Database(create_engine("postgresql+psycopg://perfguard:s3cret@db.example:5432/perf"))
    assert db.display_location() == "postgresql+psycopg://perfguard@db.example:5432/perf"


def test_registered_model_gets_an_active_baseline_and_updates_in_place(db: Database) -> None:
    with db.session() as session:
        model_id = register_model(session, "seed-cnn", "examples.models:seed_cnn", "cpu")
    with db.session() as session:
        assert register_model(session, "seed-cnn", "examples.models:seed_cnn_v2", "cuda") == model_id
        assert active_variant(session, "seed-cnn") == "baseline"

    (model,) = list_models(db)
    assert (model.name, model.factory, model.device) == ("seed-cnn", "examples.models:seed_cnn_v2", "cuda")
    assert model.active_variant == "baseline"
    assert model.updated_at > model.created_at


def test_switching_the_active_variant_keeps_exactly_one_active(db: Database) -> None:
    with db.session() as session:
        register_model(session, "seed-cnn", "examples.models:seed_cnn", "cpu")
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
        model_id = register_model(session, "seed-cnn", "examples.models:seed_cnn", "cpu")

    with pytest.raises(IntegrityError), db.session() as session:
        session.add(VariantRow(model_id=model_id, name="fp16", kind="autocast", is_active=True))


def test_a_run_of_an_unknown_variant_is_kept_under_an_inactive_unregistered_variant(
    db: Database,
) -> None:
    record = full_record()
    record.variant = "int8-candidate"
    save_run(db, record)

    with db.session() as session:
        assert active_variant(session, "seed-cnn") == "baseline"
        kinds = {name: kind for name, kind in session.execute(select(VariantRow.name, VariantRow.kind))}
    assert kinds == {"baseline": "baseline", "int8-candidate": "unregistered"}
    assert history(db, "seed-cnn")[0].variant == "int8-candidate"


def test_metrics_table_has_one_column_per_run_metrics_field() -> None:
    columns = {c.key for c in inspect(RunMetricsRow).columns} - {"run_id"}
    assert columns == {f.name for f in dataclasses.fields(RunMetrics)}


def test_samples_blob_is_exact_and_smaller_than_raw_floats() -> None:
    values = [0.41 + (i % 17) * 1e-4 for i in range(5000)]
    encoded = encode_samples(values)

    assert decode_samples(encoded) == values
    assert encoded.count == 5000
    assert len(encoded.data) < 8 * len(values) / 2


def test_concurrent_writers_and_readers_lose_no_run(db: Database) -> None:
    def write(worker: int) -> None:
        for i in range(20):
            save_run(db, full_record(f"model-{worker % 2}", minute=i))
            history(db, f"model-{worker % 2}", limit=5)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(4)))

    assert row_counts(db)["runs"] == 80
