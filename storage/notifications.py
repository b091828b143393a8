"""Reads and writes of notifications: which email about what went to whom, claimed before it is sent.

A sender claims (subject, recipient) rows before it sends, inside one statement per row set: a new
row is inserted as `pending` (ON CONFLICT DO NOTHING), a `failed` one with passes left whose wait is
over, or a `pending` one whose sender died (older than `stale_after`), is taken over by a conditional
UPDATE. Whatever another pass, a restarted daemon or another host already holds is left out, so each
alert goes out once per recipient even when senders race.

A temporary failure waits RETRY_FIRST, then twice as long each pass (1, 2, 4 ... 64 min: a mail
server away for two hours still gets the alert); a permanent one (a 5xx answer) uses up its passes at
once: sending it again cannot help.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.queries import dialect_insert
from storage.tables import ModelRow, NotificationRow

NotificationKind = Literal["alert", "digest"]

MAX_PASSES = 8
RETRY_FIRST = timedelta(minutes=1)


def retry_wait(passes: int) -> timedelta:
    """How long a failed notification waits after its `passes`-th pass before the next one."""
    return RETRY_FIRST * int(2 ** max(passes - 1, 0))


@dataclass(frozen=True, slots=True)
class Claim:
    """One email wanted: about `subject_key` (finding:12, action:3, digest:...) to `recipient`."""

    subject_key: str
    recipient: str
    subject: str
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """A stored notification, as `perfguard report` and the tests read it."""

    id: int
    kind: str
    subject_key: str
    recipient: str
    model: str | None
    status: str  # pending | sent | failed
    subject: str
    attempts: int
    passes: int
    error: str | None
    created_at: datetime
    sent_at: datetime | None


def claim(
    db: Database,
    kind: NotificationKind,
    wanted: Sequence[Claim],
    now: datetime,
    *,
    max_passes: int = MAX_PASSES,
    stale_after: timedelta = timedelta(minutes=15),
) -> list[Notification]:
    """Claim the wanted notifications that are this sender's to send now; the claimed rows."""
    if not wanted:
        return []
    with db.session() as session:
        names = {c.model for c in wanted if c.model is not None}
        model_ids = {name: model_id for name, model_id in
                     session.execute(select(ModelRow.name, ModelRow.id).where(ModelRow.name.in_(names)))}
        rows = [
            {"kind": kind, "subject_key": c.subject_key, "recipient": c.recipient, "subject": c.subject,
             "model_id": model_ids.get(c.model) if c.model else None, "status": "pending", "attempts": 0,
             "passes": 1, "created_at": now, "updated_at": now}
            for c in wanted
        ]
        inserted = session.execute(
            dialect_insert(session, NotificationRow).values(rows).on_conflict_do_nothing(
                index_elements=["kind", "subject_key", "recipient"]
            ).returning(NotificationRow.id)
        ).scalars().all()
        pairs = [and_(NotificationRow.subject_key == c.subject_key, NotificationRow.recipient == c.recipient)
                 for c in wanted]
        mine = and_(NotificationRow.kind == kind, or_(*pairs),
                    NotificationRow.id.not_in(inserted) if inserted else NotificationRow.id.is_not(None))
        # A failed row is due once its wait is over; the wait grows with its passes (see retry_wait).
        failed = session.execute(
            select(NotificationRow.id, NotificationRow.passes, NotificationRow.updated_at)
            .where(mine, NotificationRow.status == "failed", NotificationRow.passes < max_passes)
        ).all()
        due = [row.id for row in failed if _aware(row.updated_at) + retry_wait(row.passes) <= now]
        retaken = session.execute(
            update(NotificationRow)
            .where(
                mine,
                or_(
                    and_(NotificationRow.status == "failed", NotificationRow.id.in_(due)),
                    and_(NotificationRow.status == "pending", NotificationRow.updated_at < now - stale_after),
                ),
            )
            .values(status="pending", passes=NotificationRow.passes + 1, updated_at=now)
            .returning(NotificationRow.id)
        ).scalars().all()
        ids = [*inserted, *retaken]
        return _read(session, ids) if ids else []


def finish(
    db: Database, ids: Sequence[int], *, ok: bool, attempts: int, error: str | None, now: datetime,
    permanent: bool = False,
) -> None:
    """Record how sending the claimed rows `ids` went (one email carries them all); a `permanent`
    failure gets no further pass."""
    if not ids:
        return
    values: dict[str, object] = {
        "status": "sent" if ok else "failed",
        "attempts": NotificationRow.attempts + attempts,
        "error": None if ok else (f"permanent: {error}" if permanent else error),
        "updated_at": now,
        "sent_at": now if ok else None,
    }
    if permanent and not ok:
        values["passes"] = MAX_PASSES
    with db.session() as session:
        session.execute(update(NotificationRow).where(NotificationRow.id.in_(list(ids))).values(**values))


def due_for_retry(db: Database, kind: NotificationKind, now: datetime) -> list[tuple[str | None, str]]:
    """(model, subject key) of the failed notifications of `kind` whose wait is over: a mail server
    that came back gets them without waiting for the model's next run (or the next digest)."""
    with db.session(readonly=True) as session:
        rows = session.execute(
            select(ModelRow.name, NotificationRow.subject_key, NotificationRow.passes, NotificationRow.updated_at)
            .outerjoin(ModelRow, ModelRow.id == NotificationRow.model_id)
            .where(NotificationRow.kind == kind, NotificationRow.status == "failed",
                   NotificationRow.passes < MAX_PASSES)
        ).all()
    due = {(row.name, row.subject_key) for row in rows if _aware(row.updated_at) + retry_wait(row.passes) <= now}
    return sorted(due, key=lambda pair: (pair[0] or "", pair[1]))


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def notifications(db: Database, kind: NotificationKind | None = None, limit: int = 200) -> list[Notification]:
    """Stored notifications, newest first."""
    with db.session(readonly=True) as session:
        stmt = select(NotificationRow.id).order_by(NotificationRow.created_at.desc(), NotificationRow.id.desc())
        if kind is not None:
            stmt = stmt.where(NotificationRow.kind == kind)
        return _read(session, list(session.scalars(stmt.limit(limit))))


def _read(session: Session, ids: Sequence[int]) -> list[Notification]:
    stmt = (
        select(NotificationRow, ModelRow.name)
        .outerjoin(ModelRow, ModelRow.id == NotificationRow.model_id)
        .where(NotificationRow.id.in_(list(ids)))
        .order_by(NotificationRow.created_at.desc(), NotificationRow.id.desc())
    )
    return [
        Notification(
            id=row.id, kind=row.kind, subject_key=row.subject_key, recipient=row.recipient, model=name,
            status=row.status, subject=row.subject, attempts=row.attempts, passes=row.passes, error=row.error,
            created_at=row.created_at, sent_at=row.sent_at,
        )
        for row, name in session.execute(stmt)
    ]
