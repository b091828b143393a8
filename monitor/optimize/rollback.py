"""Going back to the previous variant: by hand (`perfguard rollback`), or by the daemon when the active
variant's weights fail their check. Either way the serving system is told, through the same promotion
hook that told it about the promotion."""

from __future__ import annotations

from monitor.config import LoadedConfig
from monitor.core.actions import ActionRecord, Promotion
from monitor.harness.artifacts import damaged
from monitor.optimize.promotion_hook import notify
from storage.actions import active_spec
from storage.actions import rollback as record_rollback
from storage.db import Database


def roll_back(db: Database, loaded: LoadedConfig, model: str, trigger: str = "cli",
              why: str | None = None) -> ActionRecord:
    """Make the model's previous variant active, record it, notify the hook; raises
    storage.actions.NothingToRollBack when the baseline is active."""
    record = record_rollback(db, model, trigger, why)
    configured = next((m for m in loaded.config.models if m.name == model), None)
    hook = loaded.config.optimize.for_model(configured.optimize).on_promote if configured else None
    if hook is not None and record.to_variant is not None:  # the serving system must switch back too
        with db.session(readonly=True) as session:
            spec = active_spec(session, model) or {"name": record.to_variant}
        notify(hook, record, Promotion(name=record.to_variant, kind="rollback", spec=spec, numbers={}))
    return record


def damaged_weights(error: str | None) -> bool:
    """A run that failed because the variant's weights file changed or vanished on disk
    (harness/variants.py and artifacts.open_verified say so in these words)."""
    return damaged(error) and "weights of variant" in (error or "")
