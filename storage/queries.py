"""Reads and writes of models, variants and runs: the one place that maps run records to rows and back.

Functions that are a whole unit of work on their own (saving runs, reading history) take the
`Database` and open their own session; building blocks that callers combine into a larger unit of
work (registering a model, switching the active variant) take a `Session`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, ScalarSelect, Select, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.core.runs import (
    EnvFingerprint,
    HostCondition,
    RunMetrics,
    RunRecord,
)
from storage.db import Database
from storage.samples import EncodedSamples, decode_samples, encode_samples
from storage.tables import (
    ModelRow,
    RunMetricsRow,
    RunRow,
    RunSamplesRow,
    VariantRow,
    utc_now,
)

BASELINE = "baseline"
# Kind of a variant first seen in a stored run rather than recorded by `add_variant`.
UNREGISTERED = "unregistered"

# History selects columns rather than ORM objects: building 1000 records is then several times faster.
_RUN_COLUMNS = (
    RunRow.id,
    RunRow.batch_size,
    RunRow.device,
    RunRow.status,
    RunRow.error,
    RunRow.started_at,
    RunRow.finished_at,
    RunRow.env,
    RunRow.host,
    RunRow.flags,
    RunRow.details,
    RunRow.reference_id,
    RunRow.mode,
    RunRow.concurrency,
)
# Every RunMetrics figure, in field order (history builds RunMetrics from them positionally).
METRIC_COLUMNS = tuple(getattr(RunMetricsRow, f.name) for f in dataclasses.fields(RunMetrics))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A registered model as `perfguard models` lists it."""

    name: str
    factory: str | None
    device: str
    active_variant: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TrendPoint:
    """One run in a latency series: just what change detection reads, none of the heavy columns."""

    run_id: int
    started_at: datetime
    variant: str
    status: str  # a RunStatus
    flags: tuple[str, ...]
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    latency_ms_p99: float | None
    latency_ms_mean: float | None
    ci95_rel: float | None
    samples: int | None
    throughput_per_s: float | None


def register_model(session: Session, name: str, factory: str | None, device: str) -> int:
    """Create the model (with its active baseline variant) or update its factory and device; its id."""
    model_id, created = _ensure_model(session, name, factory=factory, device=device)
    if not created:
        session.execute(
            update(ModelRow)
            .where(
                ModelRow.id == model_id,
                ModelRow.factory.is_distinct_from(factory) | (ModelRow.device != device),
            )
            .values(factory=factory, device=device)
        )
    return model_id


def add_variant(
    session: Session,
    model: str,
    name: str,
    kind: str,
    *,
    artifact_path: str | None = None,
    params: dict[str, Any] | None = None,
    parent: str | None = None,
) -> int:
    """Record a variant of a registered model (inactive), or complete one first seen in a run; its id."""
    model_id = model_id_of(session, model)
    parent_id = variant_id_of(session, model_id, parent) if parent is not None else None
    variant_id, _ = _get_or_insert(
        session, VariantRow, {"model_id": model_id, "name": name}, {"kind": kind}
    )
    session.execute(
        update(VariantRow)
        .where(VariantRow.id == variant_id)
        .values(kind=kind, artifact_path=artifact_path, params=params or {}, parent_id=parent_id)
    )
    return variant_id


def set_active_variant(session: Session, model: str, variant: str) -> None:
    """Make `variant` the one the model is benchmarked and served as."""
    model_id = model_id_of(session, model)
    variant_id = variant_id_of(session, model_id, variant)
    # Deactivate first: the database allows at most one active variant per model at any moment.
    session.execute(
        update(VariantRow)
        .where(VariantRow.model_id == model_id, VariantRow.is_active)
        .values(is_active=False)
    )
    session.execute(update(VariantRow).where(VariantRow.id == variant_id).values(is_active=True))


def active_variant(session: Session, model: str) -> str:
    """Name of the model's active variant; "baseline" for a model not registered yet."""
    name = session.scalar(
        select(VariantRow.name)
        .join(ModelRow, ModelRow.id == VariantRow.model_id)
        .where(ModelRow.name == model, VariantRow.is_active)
    )
    return name if name is not None else BASELINE


def save_run(db: Database, record: RunRecord) -> int:
    """Store one run whole (run, metrics, samples, missing model or variant) or nothing; its id."""
    return save_runs(db, [record])[0]


def save_runs(db: Database, records: Sequence[RunRecord]) -> list[int]:
    """Store runs in one transaction and set each record's `run_id`; the ids, in order.

    A run of a model or variant not seen before creates it: the model with an active baseline, any
    other variant as an inactive "unregistered" one, so that a run is never refused.
    """
    for record in records:
        if record.run_id is not None:
            raise ValueError(f"run of {record.model!r} is already stored as run {record.run_id}")
    try:
        return _save_runs(db, records)
    except IntegrityError:
        if not any(r.idempotency_key for r in records):
            raise
        # Another worker stored the same scheduled run between our check and our insert: read again.
        return _save_runs(db, records)


def _save_runs(db: Database, records: Sequence[RunRecord]) -> list[int]:
    keys = [r.idempotency_key for r in records if r.idempotency_key is not None]
    with db.session() as session:
        stored: dict[str | None, int] = {}
        stored.update(_stored_run_ids(session, keys))
        model_ids: dict[str, int] = {}
        variant_ids: dict[tuple[str, str], int] = {}
        rows = []
        for record in records:
            if record.idempotency_key in stored:
                continue  # already stored by an earlier delivery of the same job
            if record.model not in model_ids:
                model_ids[record.model], _ = _ensure_model(
                    session, record.model, factory=None, device=record.device
                )
            model_id = model_ids[record.model]
            if (record.model, record.variant) not in variant_ids:
                variant_ids[record.model, record.variant], _ = _get_or_insert(
                    session,
                    VariantRow,
                    {"model_id": model_id, "name": record.variant},
                    {"kind": UNREGISTERED},
                )
            rows.append(_run_row(record, model_id, variant_ids[record.model, record.variant]))
        session.add_all(rows)
        session.flush()
        new_ids = iter(row.id for row in rows)
        return [stored[r.idempotency_key] if r.idempotency_key in stored else next(new_ids) for r in records]


def stored_run_ids(db: Database, keys: Sequence[str]) -> dict[str, int]:
    """Idempotency key -> run id, for the keys already stored."""
    if not keys:
        return {}
    with db.session(readonly=True) as session:
        return _stored_run_ids(session, keys)


def _stored_run_ids(session: Session, keys: Sequence[str]) -> dict[str, int]:
    if not keys:
        return {}
    stmt = select(RunRow.idempotency_key, RunRow.id).where(RunRow.idempotency_key.in_(list(keys)))
    return {key: run_id for key, run_id in session.execute(stmt) if key is not None}


def history(
    db: Database,
    model: str,
    limit: int = 20,
    batch_size: int | None = None,
    with_samples: bool = False,
    mode: str | None = None,
) -> list[RunRecord]:
    """The model's last `limit` runs, newest first (raw samples only when asked: they are large);
    only those at `batch_size` and of series `mode` (infer, train, load) when given."""
    stmt = (
        select(*_RUN_COLUMNS, VariantRow.name, *METRIC_COLUMNS)
        .join(VariantRow, VariantRow.id == RunRow.variant_id)
        .outerjoin(RunMetricsRow, RunMetricsRow.run_id == RunRow.id)
        .where(RunRow.model_id == _model_id_subquery(model))
        .order_by(RunRow.started_at.desc(), RunRow.id.desc())
        .limit(limit)
    )
    if batch_size is not None:
        stmt = stmt.where(RunRow.batch_size == batch_size)
    if mode is not None:
        stmt = stmt.where(RunRow.mode == mode)
    with db.session(readonly=True) as session:
        rows = session.execute(stmt).all()
        samples: dict[int, list[float]] = {}
        if with_samples and rows:
            samples_rows = session.scalars(
                select(RunSamplesRow).where(RunSamplesRow.run_id.in_([row.id for row in rows]))
            )
            samples = {row.run_id: _decode(row) for row in samples_rows}
    return [_run_record(row, model, samples.get(row.id, [])) for row in rows]


def load_samples(db: Database, run_id: int) -> list[float]:
    """The raw per-iteration latencies (ms) of one run; empty when it kept none (e.g. it failed)."""
    with db.session(readonly=True) as session:
        row = session.get(RunSamplesRow, run_id)
        return _decode(row) if row is not None else []


def latency_trend(
    db: Database, model: str, batch_size: int, limit: int = 1000, mode: str = "infer"
) -> list[TrendPoint]:
    """The last `limit` runs of one model at one batch size in one mode, oldest first, as a light series."""
    stmt = (
        select(
            RunRow.id,
            RunRow.started_at,
            VariantRow.name,
            RunRow.status,
            RunRow.flags,
            RunMetricsRow.latency_ms_p50,
            RunMetricsRow.latency_ms_p90,
            RunMetricsRow.latency_ms_p99,
            RunMetricsRow.latency_ms_mean,
            RunMetricsRow.ci95_rel,
            RunMetricsRow.samples,
            RunMetricsRow.throughput_per_s,
        )
        .join(VariantRow, VariantRow.id == RunRow.variant_id)
        .outerjoin(RunMetricsRow, RunMetricsRow.run_id == RunRow.id)
        .where(RunRow.model_id == _model_id_subquery(model), RunRow.batch_size == batch_size, RunRow.mode == mode)
        .order_by(RunRow.started_at.desc(), RunRow.id.desc())
        .limit(limit)
    )
    with db.session(readonly=True) as session:
        rows = session.execute(stmt).all()
    return [
        TrendPoint(run_id, started_at, variant, status, tuple(flags), *figures)
        for run_id, started_at, variant, status, flags, *figures in reversed(rows)
    ]


def last_run_times(db: Database) -> dict[str, datetime]:
    """When each model's most recent run started, any status: the scheduler catches up from these."""
    stmt = (
        select(ModelRow.name, func.max(RunRow.started_at))
        .join(RunRow, RunRow.model_id == ModelRow.id)
        .group_by(ModelRow.name)
    )
    with db.session(readonly=True) as session:
        # max() keeps its argument's type, so the times come back as aware UTC like any other.
        return dict(session.execute(stmt).tuples().all())


def list_models(db: Database) -> list[ModelInfo]:
    """All registered models with their active variant, by name."""
    stmt = (
        select(ModelRow, VariantRow.name)
        .outerjoin(VariantRow, (VariantRow.model_id == ModelRow.id) & VariantRow.is_active)
        .order_by(ModelRow.name)
    )
    with db.session(readonly=True) as session:
        return [
            ModelInfo(
                name=model.name,
                factory=model.factory,
                device=model.device,
                active_variant=variant if variant is not None else BASELINE,
                created_at=model.created_at,
                updated_at=model.updated_at,
            )
            for model, variant in session.execute(stmt)
        ]


def _ensure_model(
    session: Session, name: str, *, factory: str | None, device: str
) -> tuple[int, bool]:
    """Id of the model and whether it was created now, together with its active baseline."""
    now = utc_now()
    model_id, created = _get_or_insert(
        session,
        ModelRow,
        {"name": name},
        {"factory": factory, "device": device, "created_at": now, "updated_at": now},
    )
    if created:
        session.execute(
            dialect_insert(session, VariantRow).values(
                model_id=model_id, name=BASELINE, kind=BASELINE, is_active=True
            )
        )
    return model_id, created


def _get_or_insert(
    session: Session,
    entity: type[ModelRow] | type[VariantRow],
    key: dict[str, Any],
    values: dict[str, Any],
) -> tuple[int, bool]:
    """Id of the row matching `key`, inserted with `values` if missing; True when inserted now.

    Another host may insert the same row between our look-up and our insert (PostgreSQL serves
    several daemons): the insert then does nothing and the second look-up finds their row.
    """
    where = [getattr(entity, column) == value for column, value in key.items()]
    found = session.scalar(select(entity.id).where(*where))
    if found is not None:
        return found, False
    inserted = session.scalar(
        dialect_insert(session, entity).values(**key, **values).on_conflict_do_nothing().returning(entity.id)
    )
    if inserted is not None:
        return inserted, True
    return session.scalars(select(entity.id).where(*where)).one(), False


def dialect_insert(session: Session, entity: type[Any]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with ON CONFLICT, which both dialects spell the same way and the generic insert() lacks."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(entity)
    if dialect == "sqlite":
        return sqlite.insert(entity)
    raise NotImplementedError(f"perfguard storage supports SQLite and PostgreSQL, not {dialect}")


def newest_per_model(
    entity: type[Any], models: Sequence[str], per_model: int, *where: ColumnElement[bool]
) -> Select[tuple[int]]:
    """Ids of the newest `per_model` rows of `entity` (actions, rule events: anything with `model_id`,
    `created_at` and `id`) for each of `models`, matching `where`: ROW_NUMBER over each model, so one
    busy model cannot crowd the others out of a shared limit."""
    rank = (
        func.row_number()
        .over(partition_by=entity.model_id, order_by=(entity.created_at.desc(), entity.id.desc()))
        .label("rank")
    )
    ranked = (
        select(entity.id, rank).join(ModelRow, ModelRow.id == entity.model_id)
        .where(ModelRow.name.in_(list(models)), *where).subquery()
    )
    return select(ranked.c.id).where(ranked.c.rank <= per_model)


def model_id_of(session: Session, model: str) -> int:
    """The id of a registered model; LookupError naming it otherwise."""
    model_id = session.scalar(select(ModelRow.id).where(ModelRow.name == model))
    if model_id is None:
        raise LookupError(f"model {model!r} is not registered")
    return model_id


def variant_id_of(session: Session, model_id: int, variant: str) -> int:
    """The id of one of a model's variants; LookupError naming it otherwise."""
    variant_id = session.scalar(
        select(VariantRow.id).where(VariantRow.model_id == model_id, VariantRow.name == variant)
    )
    if variant_id is None:
        raise LookupError(f"variant {variant!r} is not recorded for this model")
    return variant_id


def _model_id_subquery(model: str) -> ScalarSelect[int]:
    # A scalar subquery rather than a join keeps the plan a plain range scan of the runs index.
    return select(ModelRow.id).where(ModelRow.name == model).scalar_subquery()


def _run_row(record: RunRecord, model_id: int, variant_id: int) -> RunRow:
    samples = encode_samples(record.samples_ms) if record.samples_ms else None
    return RunRow(
        model_id=model_id,
        variant_id=variant_id,
        batch_size=record.batch_size,
        device=record.device,
        mode=record.mode,
        concurrency=record.concurrency,
        status=record.status,
        error=record.error,
        started_at=record.started_at,
        finished_at=record.finished_at,
        env=record.env.to_dict(),
        host=record.host.to_dict(),
        flags=list(record.flags),
        details=dict(record.details),
        idempotency_key=record.idempotency_key,
        reference_id=record.reference_id,
        host_name=record.env.host,
        metrics=RunMetricsRow(**record.metrics.to_dict()),
        samples=RunSamplesRow(encoding=samples.encoding, count=samples.count, data=samples.data)
        if samples is not None
        else None,
    )


def _run_record(row: Row[Any], model: str, samples_ms: list[float]) -> RunRecord:
    """A record from one row of `history`'s select: run columns, variant name, metric columns."""
    return RunRecord(
        model=model,
        variant=row.name,
        device=row.device,
        batch_size=row.batch_size,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        # Positional, in field order; all None when a run has no metrics row.
        metrics=RunMetrics(*row[-len(METRIC_COLUMNS) :]),
        env=EnvFingerprint.from_dict(row.env),
        host=HostCondition.from_dict(row.host),
        flags=list(row.flags),
        details=dict(row.details),
        samples_ms=samples_ms,
        run_id=row.id,
        reference_id=row.reference_id,
        mode=row.mode,
        concurrency=row.concurrency,
    )


def _decode(row: RunSamplesRow) -> list[float]:
    return decode_samples(EncodedSamples(row.encoding, row.count, row.data))
