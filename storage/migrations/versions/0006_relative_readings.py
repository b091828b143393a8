"""Relative readings: runs timed against their frozen reference, the host-speed probe, lost
references, the reading a finding came from, and host events.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)
METRICS = (
    "rel_to_reference", "rel_to_reference_low", "rel_to_reference_high", "rel_p99_to_reference",
    "reference_p50_ms", "reference_p99_ms", "probe_blas_ms", "probe_python_ms", "probe_cuda_ms",
)


def upgrade() -> None:
    # Every change is made in place (ADD COLUMN, CREATE INDEX): `runs` and `run_metrics` are the
    # largest tables, and a SQLite batch rebuild would copy all of them.
    for name in METRICS:
        op.add_column("run_metrics", sa.Column(name, sa.Double(), nullable=True))
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.add_column("runs", sa.Column("reference_id", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("host_name", sa.String(255), nullable=True))
    host = "json_extract(env, '$.host')" if sqlite else "env ->> 'host'"
    op.execute(f"UPDATE runs SET host_name = {host}")
    op.create_index("ix_runs_host_name_started", "runs", ["host_name", "started_at", "id"])

    op.add_column("reference_artifacts", sa.Column("lost_at", UTC_DATETIME, nullable=True))
    op.add_column("reference_artifacts", sa.Column("lost_reason", sa.Text(), nullable=True))

    op.add_column(
        "findings", sa.Column("reading", sa.String(16), nullable=False, server_default="absolute")
    )
    if not sqlite:  # SQLite cannot add a CHECK in place; the ORM and the code keep the values
        op.create_check_constraint(
            "ck_findings_reading", "findings", "reading IN ('absolute', 'relative', 'reference', 'normalised')"
        )

    op.create_table(
        "host_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_name", sa.String(255), nullable=False),
        sa.Column("signal", sa.String(300), nullable=False),
        sa.Column("change", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("change_run_id", sa.Integer(), nullable=False),
        sa.Column("change_at", UTC_DATETIME, nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("rel_change", sa.Double(), nullable=False),
        sa.Column("p_value", sa.Double(), nullable=False),
        sa.Column("first_seen", UTC_DATETIME, nullable=False),
        sa.Column("last_seen", UTC_DATETIME, nullable=False),
        sa.Column("resolved_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_host_events"),
        sa.ForeignKeyConstraint(["change_run_id"], ["runs.id"], name="fk_host_events_change_run_id_runs",
                                ondelete="CASCADE"),
        sa.CheckConstraint("state IN ('open', 'resolved')", name="ck_host_events_state"),
    )
    op.create_index("ix_host_events_host_state", "host_events", ["host_name", "state"])


def downgrade() -> None:
    op.drop_index("ix_host_events_host_state", table_name="host_events")
    op.drop_table("host_events")
    with op.batch_alter_table("findings") as batch:
        if op.get_bind().dialect.name != "sqlite":
            batch.drop_constraint("ck_findings_reading", type_="check")
        batch.drop_column("reading")
    with op.batch_alter_table("reference_artifacts") as batch:
        batch.drop_column("lost_reason")
        batch.drop_column("lost_at")
    op.drop_index("ix_runs_host_name_started", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("host_name")
        batch.drop_column("reference_id")
    with op.batch_alter_table("run_metrics") as batch:
        for name in METRICS:
            batch.drop_column(name)
