"""Reads and writes of optimisation actions and the variants they promote, rollbacks included.

An accepted action adds a variant (its recipe steps and weights in `params["spec"]`, its weights file
in `artifact_path`, the variant it was derived from as its parent) and makes it active, in the same
transaction that records the decision: a crash can never leave a promoted variant without the
numbers that justified it, nor a recorded promotion that did not happen. Open findings of the
variant that stops being active are resolved: its series is no longer benchmarked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from monitor.core.actions import ActionRecord, Promotion, Verdict
from monitor.core.diagnosis import Diagnosis
from storage.db import Database
from storage.queries import (
    BASELINE,
    model_id_of,
    newest_per_model,
    set_active_variant,
    variant_id_of,
)
from storage.tables import ActionRow, FindingRow, ModelRow, VariantRow, utc_now


class NothingToRollBack(LookupError):
    """The model's active variant has no parent: the baseline is already active."""


def active_spec(session: Session, model: str) -> dict[str, Any] | None:
    """The active variant's build spec (None for the baseline, or a model not registered yet)."""
    row = session.scalar(
        select(VariantRow).join(ModelRow, ModelRow.id == VariantRow.model_id)
        .where(ModelRow.name == model, VariantRow.is_active)
    )
    if row is None:
        return None
    return (row.params or {}).get("spec")


def unused_variant_name(session: Session, model: str, wanted: str) -> str:
    """`wanted`, or `wanted-2`, `wanted-3`...: a variant name the model has not used yet."""
    model_id = model_id_of(session, model)
    taken = set(session.scalars(select(VariantRow.name).where(VariantRow.model_id == model_id)))
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}-{n}"
    return name


def record_action(db: Database, action: ActionRecord, promotion: Promotion | None = None) -> ActionRecord:
    """Store a decision; with `promotion`, also add its variant and make it active (one transaction).

    The promoted variant is named `promotion.name`, or with a suffix if the model used that name
    before. A promotion whose `from_variant` is no longer the active one is not carried out: the
    action is stored as failed, with why.
    """
    with db.session() as session:
        model_id = model_id_of(session, action.model)
        # One promotion or rollback of a model at a time (PostgreSQL row lock; SQLite's writer lock).
        session.execute(select(ModelRow.id).where(ModelRow.id == model_id).with_for_update())
        from_id = variant_id_of(session, model_id, action.from_variant)
        to_id = None
        if promotion is not None:
            active = session.scalar(select(VariantRow).where(VariantRow.model_id == model_id, VariantRow.is_active))
            if active is None or active.id != from_id:
                # A rollback or another action changed the model while this one measured: its numbers
                # compare with a variant that is no longer served, so it must not replace that one.
                action = replace(action, status="failed", reason=action.reason + (
                    f"; not promoted: the active variant became {active.name if active else 'none'} "
                    "while the action ran"))
                promotion = None
        if promotion is not None:
            name = unused_variant_name(session, action.model, promotion.name)
            variant = VariantRow(
                model_id=model_id, name=name, kind=promotion.kind,
                artifact_path=promotion.spec.get("weights_path"),
                params={"spec": {**promotion.spec, "name": name}, "numbers": promotion.numbers}, parent_id=from_id,
            )
            session.add(variant)
            session.flush()
            to_id = variant.id
            set_active_variant(session, action.model, name)
            _resolve_findings(session, from_id, f"variant {name} promoted")
            action = replace(action, to_variant=name)
        elif action.to_variant is not None:
            to_id = variant_id_of(session, model_id, action.to_variant)
        row = ActionRow(
            model_id=model_id, kind=action.kind, trigger=action.trigger, finding_id=action.finding_id,
            from_variant_id=from_id, to_variant_id=to_id, status=action.status, reason=action.reason,
            candidates=[c.to_dict() for c in action.candidates],
            diagnosis=action.diagnosis.to_dict() if action.diagnosis is not None else None,
        )
        session.add(row)
        session.flush()
        return replace(action, id=row.id, created_at=row.created_at)


def rollback(db: Database, model: str, trigger: str = "cli", why: str | None = None) -> ActionRecord:
    """Make the active variant's parent active again; the rollback is recorded as an action (its
    reason says `why`, when given)."""
    with db.session() as session:
        model_id = model_id_of(session, model)
        session.execute(select(ModelRow.id).where(ModelRow.id == model_id).with_for_update())
        current = session.scalar(select(VariantRow).where(VariantRow.model_id == model_id, VariantRow.is_active))
        if current is None or current.parent_id is None:
            raise NothingToRollBack(f"{model}: nothing to roll back: its {BASELINE} variant is active")
        parent = session.get(VariantRow, current.parent_id)
        assert parent is not None
        set_active_variant(session, model, parent.name)
        _resolve_findings(session, current.id, f"variant {current.name} rolled back")
        now = utc_now()
        session.execute(
            update(ActionRow)
            .where(ActionRow.to_variant_id == current.id, ActionRow.status == "accepted",
                   ActionRow.kind != "rollback", ActionRow.rolled_back_at.is_(None))
            .values(rolled_back_at=now)
        )
        row = ActionRow(
            model_id=model_id, kind="rollback", trigger=trigger, finding_id=None, from_variant_id=current.id,
            to_variant_id=parent.id, status="accepted",
            reason=f"rolled back from {current.name} to {parent.name}" + (f": {why}" if why else ""),
            candidates=[], diagnosis=None,
        )
        session.add(row)
        session.flush()
        return ActionRecord(
            model=model, kind="rollback", trigger=trigger, status="accepted", reason=row.reason,
            from_variant=current.name, to_variant=parent.name, created_at=row.created_at, id=row.id,
        )


def actions(
    db: Database, model: str | None = None, limit: int = 100, *, models: Sequence[str] | None = None,
    per_model: int | None = None,
) -> list[ActionRecord]:
    """Stored actions, newest first: the newest `limit` (of one model, or all), or with `models` the
    newest `per_model` of each of them."""
    source, target = aliased(VariantRow), aliased(VariantRow)
    stmt = (
        select(ActionRow, ModelRow.name, source.name, target.name)
        .join(ModelRow, ModelRow.id == ActionRow.model_id)
        .join(source, source.id == ActionRow.from_variant_id)
        .outerjoin(target, target.id == ActionRow.to_variant_id)
        .order_by(ActionRow.created_at.desc(), ActionRow.id.desc())
    )
    if models is not None:
        stmt = stmt.where(ActionRow.id.in_(newest_per_model(ActionRow, models, per_model or limit)))
    else:
        stmt = stmt.limit(limit)
    if model is not None:
        stmt = stmt.where(ModelRow.name == model)
    with db.session(readonly=True) as session:
        return [
            ActionRecord(
                model=name, kind=row.kind, trigger=row.trigger, status=row.status, reason=row.reason,
                from_variant=from_name, to_variant=to_name, finding_id=row.finding_id,
                candidates=[Verdict.from_dict(c) for c in row.candidates],
                diagnosis=Diagnosis.from_dict(row.diagnosis) if row.diagnosis is not None else None,
                created_at=row.created_at,
                rolled_back_at=row.rolled_back_at, id=row.id,
            )
            for row, name, from_name, to_name in session.execute(stmt)
        ]


def set_diagnosis(db: Database, finding_id: int, diagnosis: Diagnosis) -> None:
    """Keep a finding's profile diff with it (shown by `perfguard check`, read by rules)."""
    with db.session() as session:
        row = session.get(FindingRow, finding_id)
        if row is None:
            raise KeyError(f"no finding {finding_id}")
        row.diagnosis = diagnosis.to_dict()


def _resolve_findings(session: Session, variant_id: int, resolution: str) -> None:
    session.execute(
        update(FindingRow)
        .where(FindingRow.variant_id == variant_id, FindingRow.state == "open")
        .values(state="resolved", resolution=resolution, resolved_at=utc_now())
    )

