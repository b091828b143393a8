"""Training advice: `perfguard optimize MODEL --train` stores its autocast verdict as an action of
kind "amp", "advised" when a candidate is worth switching to (the training code is the team's, so
nothing is promoted) or "rejected", with every candidate's numbers, like any other action.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (constraint, column, values before, values after) of the actions table
CHECKS = (
    ("ck_actions_kind", "kind", ("requantize", "prune", "distill", "rollback"),
     ("requantize", "prune", "distill", "amp", "rollback")),
    ("ck_actions_status", "status", ("accepted", "rejected", "dry_run", "failed"),
     ("accepted", "advised", "rejected", "dry_run", "failed")),
)


def _check(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _replace_checks(after: bool) -> None:
    """The actions table's CHECKs with their values after this revision, or before it. Rebuilt on
    SQLite, which cannot alter a CHECK in place: a row per action, a small table."""
    with op.batch_alter_table("actions") as batch:
        for name, column, before, later in CHECKS:
            batch.drop_constraint(op.f(name), type_="check")
            batch.create_check_constraint(op.f(name), _check(column, later if after else before))


def upgrade() -> None:
    _replace_checks(after=True)


def downgrade() -> None:
    # Advice the older schema cannot hold, and the alerts about it (an id used again later must not
    # read as already alerted).
    op.execute("DELETE FROM notifications WHERE subject_key IN "
               "(SELECT 'action:' || CAST(id AS VARCHAR(20)) FROM actions WHERE kind = 'amp')")
    op.execute("DELETE FROM actions WHERE kind = 'amp'")
    _replace_checks(after=False)
