"""Migrations on SQLite and PostgreSQL: empty databases reach head, re-runs are free, schema equals ORM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect

from storage.db import MIGRATIONS_DIR, SCHEMA_HEAD, Database
from storage.tables import Base

TABLES = {"models", "variants", "runs", "run_metrics", "run_samples", "findings", "actions", "rule_events",
          "notifications"}


@pytest.fixture
def empty_db(db_url: str) -> Iterator[Database]:
    """A new database on each backend (`db_url`, see conftest.py), opened without migrating."""
    db = Database.open(db_url, upgrade=False)
    yield db
    db.close()


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head() or ""


def current_revisions(db: Database) -> tuple[str, ...]:
    with db.engine.connect() as conn:
        return tuple(MigrationContext.configure(conn).get_current_heads())


def test_upgrade_from_an_empty_database_creates_every_table_at_head(empty_db: Database) -> None:
    assert TABLES.isdisjoint(inspect(empty_db.engine).get_table_names())

    empty_db.upgrade()

    assert TABLES <= set(inspect(empty_db.engine).get_table_names())
    assert current_revisions(empty_db) == (head_revision(),)


def test_opening_a_database_applies_migrations(db_url: str) -> None:
    with Database.open(db_url) as db:
        assert current_revisions(db) == (head_revision(),)


def test_upgrade_at_head_changes_nothing_and_only_reads_the_version(empty_db: Database) -> None:
    empty_db.upgrade()
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement.strip().upper())

    event.listen(empty_db.engine, "before_cursor_execute", record)
    empty_db.upgrade()
    event.remove(empty_db.engine, "before_cursor_execute", record)

    assert any("ALEMBIC_VERSION" in s for s in statements)
    assert not [s for s in statements if s.startswith(("CREATE", "ALTER", "DROP", "INSERT", "UPDATE"))]
    assert current_revisions(empty_db) == (head_revision(),)


def test_the_schema_head_opens_check_against_is_alembics_head(tmp_path) -> None:
    """An open reads the stamped revision and compares it with SCHEMA_HEAD, without loading Alembic;
    a new migration must move SCHEMA_HEAD with it, or every open would try to migrate."""
    assert SCHEMA_HEAD == head_revision()
    with Database.open(f"sqlite:///{tmp_path / 'new.db'}") as db:
        assert db.revisions() == {SCHEMA_HEAD}


def test_migrated_schema_matches_the_orm_exactly(empty_db: Database) -> None:
    empty_db.upgrade()

    with empty_db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_upgrading_a_database_with_runs_keeps_every_run_and_its_figures(tmp_path) -> None:
    """On SQLite a migration may rebuild a table (copy, drop, rename): with foreign keys enforced the
    drop would cascade into every table referencing it. Runs stored before an upgrade keep their figures."""
    from alembic import command
    from sqlalchemy import text

    from storage.queries import history

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Database.open(url, upgrade=False) as db:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with db.engine.connect() as conn, conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, "0004")  # a database from before the runs' idempotency key
            conn.execute(text("INSERT INTO models (id, name, device, created_at, updated_at) "
                              "VALUES (1, 'm', 'cpu', '2026-11-01 00:00:00', '2026-11-01 00:00:00')"))
            conn.execute(text("INSERT INTO variants (id, model_id, name, kind, params, created_at, is_active) "
                              "VALUES (1, 1, 'baseline', 'baseline', '{}', '2026-11-01 00:00:00', 1)"))
            for i in range(3):
                conn.execute(text(
                    "INSERT INTO runs (id, model_id, variant_id, batch_size, device, status, started_at, finished_at,"
                    " env, host, flags, details) VALUES (:i, 1, 1, 8, 'cpu', 'ok', :t, :t, '{}', '{}', '[]', '{}')"
                ), {"i": i + 1, "t": f"2026-11-01 00:0{i}:00"})
                conn.execute(text("INSERT INTO run_metrics (run_id, latency_ms_p50) VALUES (:i, 1.5)"), {"i": i + 1})
    with Database.open(url) as db:  # a new version opens it: migrated to head
        assert current_revisions(db) == (head_revision(),)
        assert [r.metrics.latency_ms_p50 for r in history(db, "m", limit=10)] == [1.5, 1.5, 1.5]
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # enforced again after it


def test_downgrading_past_training_advice_drops_it_and_its_alerts_and_keeps_the_rest(db_url: str) -> None:
    """0009 admits actions of kind "amp"; going back removes them (the older CHECK refuses them) and the
    alerts about them, so that an action id used again later is not taken as already alerted."""
    from alembic import command
    from sqlalchemy import text

    from monitor.core.actions import ActionRecord
    from storage.actions import record_action
    from storage.queries import register_model

    with Database.open(db_url) as db:
        with db.session() as session:
            register_model(session, "m", "pkg:build", "cpu")
        kept, advice = (record_action(db, ActionRecord(model="m", kind=kind, trigger="cli", status=status, reason="r",
                                                       from_variant="baseline"))
                        for kind, status in (("requantize", "rejected"), ("amp", "advised")))
        with db.engine.begin() as conn:
            for action in (kept, advice):
                conn.execute(text("INSERT INTO notifications (kind, subject_key, recipient, status, subject, attempts,"
                                  " passes, created_at, updated_at) VALUES ('alert', :key, 'a@b.c', 'sent', 's', 1, 1,"
                                  " :t, :t)"), {"key": f"action:{action.id}", "t": "2026-12-01 00:00:00"})
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with db.engine.connect() as conn, conn.begin():
            config.attributes["connection"] = conn
            command.downgrade(config, "0008")
            assert conn.execute(text("SELECT id, kind FROM actions")).all() == [(kept.id, "requantize")]
            keys = conn.execute(text("SELECT subject_key FROM notifications")).scalars().all()
            assert keys == [f"action:{kept.id}"]
            command.upgrade(config, "head")
