"""Series modes: besides one inference call at a time, a series may time a training step ("train")
or inference under N concurrent callers ("load", with its `concurrency`). Runs, findings, baselines
and references carry both, so each mode is a series of its own.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("runs", "findings", "baselines", "reference_artifacts")


def upgrade() -> None:
    # In place (ADD COLUMN with a default): every existing row is an inference series, one caller.
    for table in TABLES:
        op.add_column(table, sa.Column("mode", sa.String(8), nullable=False, server_default="infer"))
        op.add_column(table, sa.Column("concurrency", sa.Integer(), nullable=False, server_default="1"))
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot add a CHECK in place; the ORM keeps it
        op.create_check_constraint("ck_runs_mode", "runs", "mode IN ('infer', 'train', 'load')")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("ck_runs_mode", "runs", type_="check")
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("concurrency")
            batch.drop_column("mode")
