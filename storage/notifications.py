"""Reads and writes of notifications: which email about what went to whom, claimed before it is sent.

A sender claims (subject, recipient) rows before it sends, inside one statement per row set: a new
row is inserted as `pending` (ON CONFLICT DO NOTHING), a `failed` one with passes left, or a
`pending` one whose sender died (older than `stale_after`), is taken over by a conditional UPDATE.
Whatever another pass, a restarted daemon or another host already holds is left out, so each alert
goes out once per recipient even when senders race.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from storage.db import Database
from storage.models import ModelRow, NotificationRow
from storage.queries import _insert

NotificationKind = Literal["alert", "digest"]


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
    max_passes: int = 5,
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
            _insert(session, NotificationRow).values(rows).on_conflict_do_nothing(
                index_elements=["kind", "subject_key", "recipient"]
            ).returning(NotificationRow.id)
        ).scalars().all()
        pairs = [and_(NotificationRow.subject_key == c.subject_key, NotificationRow.recipient == c.recipient)
                 for c in wanted]
        retaken = session.execute(
            update(NotificationRow)
            .where(
                NotificationRow.kind == kind,
                or_(*pairs),
                NotificationRow.id.not_in(inserted) if inserted else NotificationRow.id.is_not(None),
                or_(
                    and_(NotificationRow.status == "failed", NotificationRow.passes < max_passes),
                    and_(NotificationRow.status == "pending", NotificationRow.updated_at < now - stale_after),
                ),
            )
            .values(status="pending", passes=NotificationRow.passes + 1, updated_at=now)
            .returning(NotificationRow.id)
        ).scalars().all()
        ids = [*inserted, *retaken]
        return _read(session, ids) if ids else []


def finish(db: Database, ids: Sequence[int], *, ok: bool, attempts: int, error: str | None, now: datetime) -> None:
    """Record how sending the claimed rows `ids` went (one email carries them all)."""
    if not ids:
        return
    with db.session() as session:
        session.execute(
            update(NotificationRow)
            .where(NotificationRow.id.in_(list(ids)))
            .values(
                status="sent" if ok else "failed",
                attempts=NotificationRow.attempts + attempts,
                error=None if ok else error,
                updated_at=now,
                sent_at=now if ok else None,
            )
        )


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
