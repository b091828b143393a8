"""Initial schema: models, variants, runs, run metrics and raw samples.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("factory", sa.String(500), nullable=True),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )
    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("artifact_path", sa.String(1000), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_variants"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_variants_model_id_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["variants.id"], name="fk_variants_parent_id_variants", ondelete="SET NULL"
        ),
        sa.UniqueConstraint("model_id", "name", name="uq_variants_model_id_name"),
    )
    op.create_index(
        "uq_variants_one_active",
        "variants",
        ["model_id"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("host", sa.JSON(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_runs_model_id_models", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["variant_id"], ["variants.id"], name="fk_runs_variant_id_variants"),
        sa.CheckConstraint("status IN ('ok', 'failed', 'timeout')", name=op.f("ck_runs_status")),
    )
    op.create_index(
        "ix_runs_model_batch_started", "runs", ["model_id", "batch_size", "started_at", "id"]
    )
    op.create_index("ix_runs_model_started", "runs", ["model_id", "started_at", "id"])
    op.create_table(
        "run_metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("latency_ms_p50", sa.Double(), nullable=True),
        sa.Column("latency_ms_p90", sa.Double(), nullable=True),
        sa.Column("latency_ms_p99", sa.Double(), nullable=True),
        sa.Column("latency_ms_mean", sa.Double(), nullable=True),
        sa.Column("latency_ms_std", sa.Double(), nullable=True),
        sa.Column("latency_ms_min", sa.Double(), nullable=True),
        sa.Column("latency_ms_max", sa.Double(), nullable=True),
        sa.Column("ci95_rel", sa.Double(), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=True),
        sa.Column("throughput_per_s", sa.Double(), nullable=True),
        sa.Column("peak_rss_mb", sa.Double(), nullable=True),
        sa.Column("cuda_peak_mem_mb", sa.Double(), nullable=True),
        sa.Column("model_size_mb", sa.Double(), nullable=True),
        sa.Column("params", sa.Integer(), nullable=True),
        sa.Column("accuracy", sa.Double(), nullable=True),
        sa.Column("gpu_util_pct", sa.Double(), nullable=True),
        sa.Column("gpu_power_w", sa.Double(), nullable=True),
        sa.Column("energy_j_per_inference", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_metrics"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_run_metrics_run_id_runs", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "run_samples",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("encoding", sa.String(32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_samples"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_run_samples_run_id_runs", ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("run_samples")
    op.drop_table("run_metrics")
    op.drop_index("ix_runs_model_started", table_name="runs")
    op.drop_index("ix_runs_model_batch_started", table_name="runs")
    op.drop_table("runs")
    op.drop_index("uq_variants_one_active", table_name="variants")
    op.drop_table("variants")
    op.drop_table("models")
