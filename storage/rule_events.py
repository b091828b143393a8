"""Reads and writes of what rules did: each decision that fired, each rule that failed or timed out.

These rows are also the rules' memory across runs and processes: which keys a rule already answered
for a model (hysteresis) and when it last fired (cooldown). `fire` reads that memory and writes the
new events in one transaction with the model's row locked, so that the daemon and a `perfguard
check` evaluating the same model at once cannot both act on one regression.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.queries import model_id_of, newest_per_model
from storage.tables import ModelRow, RuleEventRow

EventOutcome = Literal["alert", "requantize", "prune", "distill", "error", "timeout"]
FIRED_OUTCOMES = ("alert", "requantize", "prune")  # a decision that went through, as opposed to a failure


@dataclass(frozen=True, slots=True)
class NewRuleEvent:
    """An event to store: a decision that fires (outcome = its action) or a failure (error, timeout)."""

    outcome: EventOutcome
    reason: str
    key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    finding_id: int | None = None


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """A stored event, as reports and the action runner read it."""

    id: int
    model: str
    rule: str
    outcome: EventOutcome
    reason: str
    key: str | None
    details: dict[str, Any]
    finding_id: int | None
    action_id: int | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "rule": self.rule, "outcome": self.outcome,
                "reason": self.reason, "key": self.key, "details": self.details, "finding_id": self.finding_id,
                "action_id": self.action_id, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, slots=True)
class RuleMemory:
    """What one rule already did for one model: when it last fired, and which of the asked keys it
    has answered before."""

    last_fired_at: datetime | None
    answered_keys: frozenset[str]


def fire(
    db: Database,
    model: str,
    rule: str,
    keys: Collection[str],
    now: datetime,
    admit: Callable[[RuleMemory], Sequence[NewRuleEvent]],
) -> list[RuleEvent]:
    """Store the events `admit` chooses, given the rule's memory for `model` and `keys`; the stored ones.

    Memory and writes share one transaction under a lock of the model's row (PostgreSQL row lock;
    SQLite's writer lock), so concurrent evaluations see each other's events.
    """
    with db.session() as session:
        model_id = model_id_of(session, model)
        session.execute(select(ModelRow.id).where(ModelRow.id == model_id).with_for_update())
        fired = (RuleEventRow.model_id == model_id) & (RuleEventRow.rule == rule) & RuleEventRow.outcome.in_(
            FIRED_OUTCOMES
        )
        last = session.scalar(select(func.max(RuleEventRow.created_at)).where(fired))
        answered: set[str] = set()
        if keys:
            answered = {
                k
                for k in session.scalars(select(RuleEventRow.key).where(fired, RuleEventRow.key.in_(set(keys))))
                if k is not None
            }
        chosen = admit(RuleMemory(last, frozenset(answered)))
        return _add(session, model_id, model, rule, chosen, now)


def record(db: Database, model: str, rule: str, new: Sequence[NewRuleEvent], now: datetime) -> list[RuleEvent]:
    """Store events as they are (a rule's failure: it has no memory to consult); the stored ones."""
    with db.session() as session:
        return _add(session, model_id_of(session, model), model, rule, new, now)


def link_action(db: Database, event_id: int, action_id: int) -> None:
    """Note which optimisation action answered a fired event."""
    with db.session() as session:
        result = session.execute(update(RuleEventRow).where(RuleEventRow.id == event_id).values(action_id=action_id))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise KeyError(f"no rule event {event_id}")


def events(
    db: Database,
    model: str | None = None,
    limit: int = 100,
    outcome: str | None = None,
    *,
    models: Sequence[str] | None = None,
    per_model: int | None = None,
) -> list[RuleEvent]:
    """The newest `limit` rule events (of one model, or all; of one outcome, or all), newest first; with
    `models`, the newest `per_model` of each of them."""
    of_outcome = [RuleEventRow.outcome == outcome] if outcome is not None else []
    stmt = (
        select(RuleEventRow, ModelRow.name)
        .join(ModelRow, ModelRow.id == RuleEventRow.model_id)
        .where(*of_outcome)
        .order_by(RuleEventRow.created_at.desc(), RuleEventRow.id.desc())
    )
    if models is not None:
        newest = newest_per_model(RuleEventRow, models, per_model or limit, *of_outcome)
        stmt = stmt.where(RuleEventRow.id.in_(newest))
    else:
        stmt = stmt.limit(limit)
    if model is not None:
        stmt = stmt.where(ModelRow.name == model)
    with db.session(readonly=True) as session:
        return [_event(row, name) for row, name in session.execute(stmt)]


def _add(
    session: Session, model_id: int, model: str, rule: str, new: Sequence[NewRuleEvent], now: datetime
) -> list[RuleEvent]:
    rows = [
        RuleEventRow(
            model_id=model_id,
            rule=rule,
            key=e.key,
            outcome=e.outcome,
            reason=e.reason,
            details=dict(e.details),
            finding_id=e.finding_id,
            created_at=now,
        )
        for e in new
    ]
    session.add_all(rows)
    session.flush()
    return [_event(row, model) for row in rows]


def _event(row: RuleEventRow, model: str) -> RuleEvent:
    return RuleEvent(
        id=row.id,
        model=model,
        rule=row.rule,
        outcome=row.outcome,  # type: ignore[arg-type]
        reason=row.reason,
        key=row.key,
        details=row.details,
        finding_id=row.finding_id,
        action_id=row.action_id,
        created_at=row.created_at,
    )
