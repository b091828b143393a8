"""Migrations on SQLite and PostgreSQL: empty databases reach head, re-runs are free, schema equals ORM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect

from storage.db import MIGRATIONS_DIR, Database
from storage.models import Base

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


def test_migrated_schema_matches_the_orm_exactly(empty_db: Database) -> None:
    empty_db.upgrade()

    with empty_db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
