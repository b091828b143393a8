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
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(300), nullable=True))
        batch.create_unique_constraint("uq_runs_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("uq_runs_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")
