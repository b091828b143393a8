"""Runs: an idempotency key, so that a job redelivered to another worker never stores a run twice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # In place on both backends (ADD COLUMN and a unique index): `runs` is the largest table, and a
    # SQLite batch rebuild would copy all of it.
    op.add_column("runs", sa.Column("idempotency_key", sa.String(300), nullable=True))
    op.create_index("uq_runs_idempotency_key", "runs", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_runs_idempotency_key", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("idempotency_key")
