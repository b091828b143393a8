"""Rules and actions: rule events, optimisation actions, and the profile diff of a finding.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str, ondelete: str = "CASCADE") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def upgrade() -> None:
    with op.batch_alter_table("findings") as batch:
        batch.add_column(sa.Column("diagnosis", sa.JSON(), nullable=True))
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(200), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=True),
        sa.Column("from_variant_id", sa.Integer(), nullable=False),
        sa.Column("to_variant_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("diagnosis", sa.JSON(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("rolled_back_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
        _fk("actions", "model_id", "models"),
        _fk("actions", "finding_id", "findings", "SET NULL"),
        _fk("actions", "from_variant_id", "variants"),
        _fk("actions", "to_variant_id", "variants", "SET NULL"),
        sa.CheckConstraint("kind IN ('requantize', 'prune', 'rollback')", name=op.f("ck_actions_kind")),
        sa.CheckConstraint(
            "status IN ('accepted', 'rejected', 'dry_run', 'failed')", name=op.f("ck_actions_status")
        ),
    )
    op.create_index("ix_actions_model_created", "actions", ["model_id", "created_at"])
    op.create_table(
        "rule_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("key", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=True),
        sa.Column("action_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rule_events"),
        _fk("rule_events", "model_id", "models"),
        _fk("rule_events", "finding_id", "findings", "SET NULL"),
        _fk("rule_events", "action_id", "actions", "SET NULL"),
        sa.CheckConstraint(
            "outcome IN ('alert', 'requantize', 'prune', 'error', 'timeout')", name=op.f("ck_rule_events_outcome")
        ),
    )
    op.create_index(
        "ix_rule_events_model_rule_created", "rule_events", ["model_id", "rule", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_rule_events_model_rule_created", table_name="rule_events")
    op.drop_table("rule_events")
    op.drop_index("ix_actions_model_created", table_name="actions")
    op.drop_table("actions")
    with op.batch_alter_table("findings") as batch:
        batch.drop_column("diagnosis")
