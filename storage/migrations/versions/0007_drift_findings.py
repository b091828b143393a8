"""Drift findings: a series that moves steadily is one finding of kind "drift" (its slope, since when,
how much in all), not a staircase of steps.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # In place (ADD COLUMN): every existing finding is a step.
    op.add_column("findings", sa.Column("kind", sa.String(8), nullable=False, server_default="step"))
    op.add_column("findings", sa.Column("drift", sa.JSON(), nullable=True))
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot add a CHECK in place; the ORM keeps it
        op.create_check_constraint("ck_findings_kind", "findings", "kind IN ('step', 'drift')")


def downgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        if op.get_bind().dialect.name != "sqlite":
            batch.drop_constraint("ck_findings_kind", type_="check")
        batch.drop_column("drift")
        batch.drop_column("kind")
