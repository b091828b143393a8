"""Series modes: besides one inference call at a time, a series may time a training step ("train")
or inference under N concurrent callers ("load", with its `concurrency`). Runs, findings, baselines
and references carry both, so each mode is a series of its own. And the distill action: actions and
rule events may be of kind "distill".

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
# (table, constraint, column, values before, values after): the small tables whose CHECK gains "distill"
CHECKS = (
    ("actions", "ck_actions_kind", "kind", ("requantize", "prune", "rollback"),
     ("requantize", "prune", "distill", "rollback")),
    ("rule_events", "ck_rule_events_outcome", "outcome", ("alert", "requantize", "prune", "error", "timeout"),
     ("alert", "requantize", "prune", "distill", "error", "timeout")),
)


def _check(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _replace_checks(after: bool) -> None:
    """Each CHECK of CHECKS with its values after this revision, or before it. Rebuilt on SQLite,
    which cannot alter a CHECK in place: these tables are small (a row per action or rule firing)."""
    for table, name, column, before, later in CHECKS:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(name), type_="check")
            batch.create_check_constraint(op.f(name), _check(column, later if after else before))


def upgrade() -> None:
    # In place (ADD COLUMN with a default): every existing row is an inference series, one caller.
    for table in TABLES:
        op.add_column(table, sa.Column("mode", sa.String(8), nullable=False, server_default="infer"))
        op.add_column(table, sa.Column("concurrency", sa.Integer(), nullable=False, server_default="1"))
    if op.get_bind().dialect.name != "sqlite":  # SQLite cannot add a CHECK in place; the ORM keeps it
        op.create_check_constraint("ck_runs_mode", "runs", "mode IN ('infer', 'train', 'load')")
    _replace_checks(after=True)


def downgrade() -> None:
    _replace_checks(after=False)
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("ck_runs_mode", "runs", type_="check")
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("concurrency")
            batch.drop_column("mode")
