"""What only PostgreSQL storage does: answer in the session's own time zone, and sit behind a password.

Everything else storage guarantees is tested on SQLite and PostgreSQL alike in test_storage.py.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine
from storage_helpers import full_record

from storage.db import Database
from storage.queries import history, load_samples, save_run

CEST = timezone(timedelta(hours=2))


@pytest.mark.postgres
def test_times_come_back_in_utc_although_the_session_answers_in_its_own_zone(pg_db: Database) -> None:
    # The premise: the test session's time zone (see conftest.py) is neither UTC nor the zone given.
    with pg_db.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Kolkata"
    started = datetime(2026, 11, 22, 12, 0, 5, 654321, tzinfo=CEST)
    record = dataclasses.replace(full_record(), started_at=started, finished_at=started + timedelta(seconds=30))
    run_id = save_run(pg_db, record)

    (loaded,) = history(pg_db, "seed-cnn", with_samples=True)
    assert loaded == dataclasses.replace(record, run_id=run_id)
    assert loaded.started_at.tzinfo == UTC and loaded.finished_at.tzinfo == UTC
    assert loaded.started_at == datetime(2026, 11, 22, 10, 0, 5, 654321, tzinfo=UTC)
    assert load_samples(pg_db, run_id) == record.samples_ms


def test_server_location_is_shown_without_its_password() -> None:
    # No server needed: the engine is never connected.
    db = Database(create_engine("postgresql+psycopg://perfguard:s3cret@db.example:5432/perf"))
    assert db.display_location() == "postgresql+psycopg://perfguard@db.example:5432/perf"
