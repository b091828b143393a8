"""Detection: frozen reference artifacts, accepted baselines, environment changes and findings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "reference_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("artifact", sa.JSON(), nullable=False),
        sa.Column("measured", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reference_artifacts"),
        _fk("reference_artifacts", "model_id", "models"),
        _fk("reference_artifacts", "variant_id", "variants"),
    )
    op.create_index(
        "ix_reference_artifacts_series",
        "reference_artifacts",
        ["variant_id", "device", "batch_size", "created_at"],
    )
    op.create_table(
        "baselines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("since_run_id", sa.Integer(), nullable=False),
        sa.Column("since", UTC_DATETIME, nullable=False),
        sa.Column("accepted_at", UTC_DATETIME, nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_baselines"),
        _fk("baselines", "model_id", "models"),
        _fk("baselines", "variant_id", "variants"),
        _fk("baselines", "since_run_id", "runs"),
    )
    op.create_index("ix_baselines_model_accepted", "baselines", ["model_id", "accepted_at"])
    op.create_table(
        "env_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("diff", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_env_changes"),
        _fk("env_changes", "model_id", "models"),
        _fk("env_changes", "run_id", "runs"),
        sa.UniqueConstraint("run_id", name="uq_env_changes_run_id"),
    )
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("change", sa.String(8), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("resolution", sa.String(200), nullable=True),
        sa.Column("change_run_id", sa.Integer(), nullable=False),
        sa.Column("change_at", UTC_DATETIME, nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("rel_change", sa.Double(), nullable=False),
        sa.Column("p_value", sa.Double(), nullable=False),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("cause", sa.String(16), nullable=True),
        sa.Column("confirmation", sa.JSON(), nullable=True),
        sa.Column("env_diff", sa.JSON(), nullable=True),
        sa.Column("first_seen", UTC_DATETIME, nullable=False),
        sa.Column("last_seen", UTC_DATETIME, nullable=False),
        sa.Column("resolved_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_findings"),
        _fk("findings", "model_id", "models"),
        _fk("findings", "variant_id", "variants"),
        _fk("findings", "change_run_id", "runs"),
        sa.CheckConstraint("state IN ('open', 'resolved')", name=op.f("ck_findings_state")),
        sa.CheckConstraint(
            "verdict IN ('regression', 'improvement')", name=op.f("ck_findings_verdict")
        ),
    )
    op.create_index("ix_findings_model_state", "findings", ["model_id", "state"])
    op.create_index(
        "ix_findings_series", "findings", ["variant_id", "device", "batch_size", "metric"]
    )


def downgrade() -> None:
    op.drop_index("ix_findings_series", table_name="findings")
    op.drop_index("ix_findings_model_state", table_name="findings")
    op.drop_table("findings")
    op.drop_table("env_changes")
    op.drop_index("ix_baselines_model_accepted", table_name="baselines")
    op.drop_table("baselines")
    op.drop_index("ix_reference_artifacts_series", table_name="reference_artifacts")
    op.drop_table("reference_artifacts")
