"""Reads and writes of what detection keeps: findings, environment changes, baselines, references.

Detection reads runs as light `SeriesRun`s (no samples, no details) and writes back findings keyed by
their series and the run where the change began, so that checking again updates a finding rather
than adding a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from monitor.core.diagnosis import Diagnosis
from monitor.core.series import (
    STAIR_SLACK_RUNS,
    Drift,
    FindingRecord,
    Level,
    ReferenceInfo,
    SampleCheck,
    SeriesKey,
    SeriesRun,
    SeriesState,
)
from storage.db import Database
from storage.queries import METRIC_COLUMNS, dialect_insert, model_id_of, variant_id_of
from storage.tables import (
    BaselineRow,
    EnvChangeRow,
    FindingRow,
    ModelRow,
    ReferenceRow,
    RunMetricsRow,
    RunRow,
    VariantRow,
    utc_now,
)

METRIC_NAMES = tuple(column.key for column in METRIC_COLUMNS)

# How far (in runs) a change may move between checks and still be the same finding: more history
# sharpens where a change began (a noisy one moved 7 runs in bench/detection_real.py).
SAME_CHANGE_RUNS = 12
PART_OF_DRIFT = "part of a drift"  # the resolution of a step that turned out to be a stair of a creep
NOT_DETECTED = "no longer detected"


def series_runs(db: Database, model: str, limit: int) -> list[SeriesRun]:
    """The newest `limit` runs of `model` per series, oldest first, with their figures.

    The per-series limit is applied in the database (ROW_NUMBER over each series), so a check reads
    the same amount after a year of runs as after a week.
    """
    rank = (
        func.row_number()
        .over(
            partition_by=(RunRow.variant_id, RunRow.device, RunRow.batch_size, RunRow.mode, RunRow.concurrency),
            order_by=(RunRow.started_at.desc(), RunRow.id.desc()),
        )
        .label("rank")
    )
    with db.session(readonly=True) as session:
        model_id = session.scalar(select(ModelRow.id).where(ModelRow.name == model))
        if model_id is None:
            return []
        newest = select(RunRow.id, rank).where(RunRow.model_id == model_id).subquery()
        stmt = (
            select(
                RunRow.id,
                RunRow.started_at,
                VariantRow.name,
                RunRow.device,
                RunRow.batch_size,
                RunRow.mode,
                RunRow.concurrency,
                RunRow.status,
                RunRow.flags,
                RunRow.env,
                RunRow.reference_id,
                *METRIC_COLUMNS,
            )
            .join(newest, newest.c.id == RunRow.id)
            .join(VariantRow, VariantRow.id == RunRow.variant_id)
            .outerjoin(RunMetricsRow, RunMetricsRow.run_id == RunRow.id)
            .where(newest.c.rank <= limit)
            .order_by(RunRow.started_at, RunRow.id)
        )
        return [
            SeriesRun(
                run_id, started_at, SeriesKey(variant, device, batch, mode, concurrency), status, tuple(flags), env,
                dict(zip(METRIC_NAMES, figures, strict=True)), reference_id,
            )
            for (run_id, started_at, variant, device, batch, mode, concurrency, status, flags, env, reference_id,
                 *figures) in session.execute(stmt)
        ]


def baselines(db: Database, model: str) -> dict[SeriesKey, datetime]:
    """The accepted baseline of each series of `model`: the start time of the first run detection reads.

    By start time, not run id: a run stored late (flushed from the spool after an outage, or sent by
    another host) has a higher id than runs that started after it.
    """
    return baselines_by_model(db, [model]).get(model, {})


def baselines_by_model(db: Database, models: Sequence[str]) -> dict[str, dict[SeriesKey, datetime]]:
    """`baselines` of several models in one query (a report reads the whole fleet)."""
    stmt = (
        select(ModelRow.name, VariantRow.name, BaselineRow.device, BaselineRow.batch_size, BaselineRow.mode,
               BaselineRow.concurrency, BaselineRow.since)
        .join(VariantRow, VariantRow.id == BaselineRow.variant_id)
        .join(ModelRow, ModelRow.id == BaselineRow.model_id)
        .where(ModelRow.name.in_(list(models)))
        .order_by(BaselineRow.accepted_at, BaselineRow.id)
    )
    result: dict[str, dict[SeriesKey, datetime]] = {}
    with db.session(readonly=True) as session:
        for model, v, d, b, mode, concurrency, since in session.execute(stmt):
            result.setdefault(model, {})[SeriesKey(v, d, b, mode, concurrency)] = since
    return result


def accept_baselines(
    db: Database, model: str, since: dict[SeriesKey, tuple[int, datetime]], note: str | None
) -> None:
    """Make the runs from each given run on the baseline of their series; resolve open findings."""
    with db.session() as session:
        model_id = model_id_of(session, model)
        now = utc_now()
        for key, (run_id, started_at) in since.items():
            session.add(
                BaselineRow(
                    model_id=model_id,
                    variant_id=variant_id_of(session, model_id, key.variant),
                    device=key.device,
                    batch_size=key.batch_size,
                    mode=key.mode,
                    concurrency=key.concurrency,
                    since_run_id=run_id,
                    since=started_at,
                    accepted_at=now,
                    note=note,
                )
            )
        for row in session.scalars(
            select(FindingRow).where(FindingRow.model_id == model_id, FindingRow.state == "open")
        ):
            row.state, row.resolution, row.resolved_at = "resolved", "baseline accepted", now


def record_env_changes(db: Database, model: str, changes: Iterable[tuple[int, datetime, dict[str, Any]]]) -> None:
    """Store environment changes (run id, time, field -> [before, after]); known ones are skipped."""
    changes = list(changes)
    if not changes:
        return
    with db.session() as session:
        model_id = model_id_of(session, model)
        rows = [{"model_id": model_id, "run_id": run_id, "at": at, "diff": diff} for run_id, at, diff in changes]
        # ON CONFLICT DO NOTHING: a check running beside another one stores each change once.
        insert = dialect_insert(session, EnvChangeRow).values(rows)
        session.execute(insert.on_conflict_do_nothing(index_elements=["run_id"]))


def env_changes(db: Database, model: str) -> list[tuple[int, datetime, dict[str, Any]]]:
    """Stored environment changes of `model`, oldest first."""
    return env_changes_by_model(db, [model]).get(model, [])


def env_changes_by_model(db: Database, models: Sequence[str]) -> dict[str, list[tuple[int, datetime, dict[str, Any]]]]:
    """`env_changes` of several models in one query."""
    stmt = (
        select(ModelRow.name, EnvChangeRow.run_id, EnvChangeRow.at, EnvChangeRow.diff)
        .join(ModelRow, ModelRow.id == EnvChangeRow.model_id)
        .where(ModelRow.name.in_(list(models)))
        .order_by(EnvChangeRow.at, EnvChangeRow.run_id)
    )
    result: dict[str, list[tuple[int, datetime, dict[str, Any]]]] = {}
    with db.session(readonly=True) as session:
        for model, run_id, at, diff in session.execute(stmt):
            result.setdefault(model, []).append((run_id, at, diff))
    return result


def sync_findings(
    db: Database,
    model: str,
    detected: Sequence[FindingRecord],
    checked: dict[tuple[SeriesKey, str, str], SeriesState],
    run_order: dict[int, int],
) -> list[FindingRecord]:
    """Merge one check's findings into the stored ones and return the model's findings as stored.

    A detected finding updates the finding of the same series, metric and direction whose change
    began within `SAME_CHANGE_RUNS` runs (by `run_order`, the position of each run in its series),
    reopening it if an earlier check had let it go; otherwise it is new. An open finding that this
    check does not report is resolved only once its series' current level is back within half the
    minimum effect of the level before the change: a change hovering at the threshold does not flap
    between open and resolved, nor come back as a new finding. The cause an A/B gave (absolute
    readings) is kept; a cause the reading itself implies is written with the finding.
    """
    now = utc_now()
    with db.session() as session:
        model_id = model_id_of(session, model)
        # One check of a model at a time writes findings (PostgreSQL row lock; SQLite's writer lock).
        session.execute(select(ModelRow.id).where(ModelRow.id == model_id).with_for_update())
        variant_ids: dict[str, int] = {}

        def variant_id(name: str) -> int:
            if name not in variant_ids:
                variant_ids[name] = variant_id_of(session, model_id, name)
            return variant_ids[name]

        names = {variant_id(key.variant): key.variant for key, _, _ in checked}
        candidates = list(
            session.scalars(
                select(FindingRow).where(
                    FindingRow.model_id == model_id,
                    (FindingRow.state == "open") | (FindingRow.resolution == NOT_DETECTED),
                )
            )
        )
        matched: set[int] = set()
        for finding in detected:
            row = _match(candidates, matched, variant_id(finding.key.variant), finding, run_order) or (
                _first_stair(candidates, matched, finding, variant_id, run_order) if finding.kind == "drift" else None)
            if row is None:
                row = _new_row(model_id, variant_id(finding.key.variant), finding, now)
                session.add(row)
            _update(row, finding, now)
            session.flush()
            matched.add(row.id)
        _fold_into_drifts(candidates, matched, detected, variant_id, run_order, now)
        for row in candidates:
            if row.id in matched or row.state != "open":
                continue
            key = SeriesKey(names.get(row.variant_id, ""), row.device, row.batch_size, row.mode, row.concurrency)
            state = checked.get((key, row.metric, row.reading))
            if state is not None and not state.holds(row.before.get("median"), row.change):
                row.state, row.resolution, row.resolved_at = "resolved", NOT_DETECTED, now
        session.flush()
    return findings(db, model)


def _fold_into_drifts(
    rows: list[FindingRow], matched: set[int], detected: Sequence[FindingRecord], variant_id: Callable[[str], int],
    order: dict[int, int], now: datetime,
) -> None:
    """Resolve the open steps a detected drift took in: the stairs an earlier check reported while
    the creep was young (same series, metric, reading and direction, begun with or after the drift)."""
    for drift in (f for f in detected if f.kind == "drift"):
        for row in _stairs_of(rows, matched, drift, variant_id, order):
            row.state, row.resolution, row.resolved_at = "resolved", PART_OF_DRIFT, now
            matched.add(row.id)


def _first_stair(
    rows: list[FindingRow], matched: set[int], drift: FindingRecord, variant_id: Callable[[str], int],
    order: dict[int, int],
) -> FindingRow | None:
    """The earliest open stair of `drift`, turned into its drift finding; None when it has none. A creep
    first reported as a step goes on as that finding: one finding, and one alert, per cause."""
    stairs = sorted(_stairs_of(rows, matched, drift, variant_id, order), key=lambda r: order[r.change_run_id])
    if not stairs:
        return None
    stairs[0].kind = "drift"
    return stairs[0]


def _stairs_of(
    rows: list[FindingRow], matched: set[int], drift: FindingRecord, variant_id: Callable[[str], int],
    order: dict[int, int],
) -> list[FindingRow]:
    """The open steps not yet matched in this check that `drift` took in: same series, metric, reading
    and direction, begun with the drift or after it (within STAIR_SLACK_RUNS)."""
    began = order.get(drift.change_run_id)
    if began is None:
        return []
    key = drift.key
    where = (variant_id(key.variant), key.device, key.batch_size, key.mode, key.concurrency, drift.metric,
             drift.reading, drift.change)
    return [row for row in rows
            if row.id not in matched and row.state == "open" and row.kind == "step" and row.change_run_id in order
            and order[row.change_run_id] >= began - STAIR_SLACK_RUNS
            and (row.variant_id, row.device, row.batch_size, row.mode, row.concurrency, row.metric, row.reading,
                 row.change) == where]


def _new_row(model_id: int, variant_id: int, finding: FindingRecord, now: datetime) -> FindingRow:
    key = finding.key
    return FindingRow(model_id=model_id, variant_id=variant_id, device=key.device, batch_size=key.batch_size,
                      mode=key.mode, concurrency=key.concurrency, metric=finding.metric, reading=finding.reading,
                      kind=finding.kind, change=finding.change,
                      verdict=finding.verdict, first_seen=now)


def _update(row: FindingRow, finding: FindingRecord, now: datetime) -> None:
    """The stored finding as this check sees it: open, where the change began and how big it is;
    raw-sample figures and a cause kept when this check brings none."""
    row.state, row.resolution, row.resolved_at = "open", None, None
    row.change_run_id = finding.change_run_id
    row.change_at = finding.change_at
    row.before, row.after = finding.before.to_dict(), finding.after.to_dict()
    row.rel_change, row.p_value = finding.rel_change, finding.p_value
    row.samples = finding.samples.to_dict() if finding.samples is not None else row.samples
    row.drift = finding.drift.to_dict() if finding.drift is not None else None
    row.env_diff = finding.env_diff
    if finding.cause is not None:
        row.cause, row.confirmation = finding.cause, finding.confirmation
    row.last_seen = now


def _match(
    rows: list[FindingRow], taken: set[int], variant_id: int, finding: FindingRecord, order: dict[int, int]
) -> FindingRow | None:
    """The stored finding a detected one continues: same series, metric, direction and kind, a size
    within a factor of two, the nearest change start within SAME_CHANGE_RUNS runs, and not already
    continued by another in this check. A drift continues the series' open drift, however far it has
    gone and wherever its start is now placed (a series drifts one way at a time)."""
    at = order.get(finding.change_run_id)
    best: tuple[int, FindingRow] | None = None
    for row in rows:
        if (
            row.id in taken
            or row.variant_id != variant_id
            or row.device != finding.key.device
            or row.batch_size != finding.key.batch_size
            or row.mode != finding.key.mode
            or row.concurrency != finding.key.concurrency
            or row.metric != finding.metric
            or row.reading != finding.reading
            or row.change != finding.change
            or row.kind != finding.kind
        ):
            continue
        if finding.kind == "drift" and row.state == "open":
            return row
        there = order.get(row.change_run_id)
        if at is None or there is None or abs(at - there) > SAME_CHANGE_RUNS:
            continue
        if not 0.5 <= abs(finding.rel_change) / max(abs(row.rel_change), 1e-12) <= 2.0:
            continue  # a different size: another event near the same runs (a blip, then the real step)
        if best is None or abs(at - there) < best[0]:
            best = (abs(at - there), row)
    return None if best is None else best[1]


def findings(
    db: Database, model: str | None = None, state: str | None = None, *, models: Sequence[str] | None = None
) -> list[FindingRecord]:
    """Stored findings (of one model, of `models`, or all), newest change first."""
    stmt = (
        select(FindingRow, ModelRow.name, VariantRow.name)
        .join(ModelRow, ModelRow.id == FindingRow.model_id)
        .join(VariantRow, VariantRow.id == FindingRow.variant_id)
        .order_by(FindingRow.change_at.desc(), FindingRow.id.desc())
    )
    if model is not None:
        stmt = stmt.where(ModelRow.name == model)
    if models is not None:
        stmt = stmt.where(ModelRow.name.in_(list(models)))
    if state is not None:
        stmt = stmt.where(FindingRow.state == state)
    with db.session(readonly=True) as session:
        return [_record(row, name, variant) for row, name, variant in session.execute(stmt)]


def set_cause(db: Database, finding_id: int, cause: str | None, confirmation: dict[str, Any]) -> None:
    """Record what the A/B against the reference said about a finding (None: it could not run)."""
    with db.session() as session:
        row = session.get(FindingRow, finding_id)
        if row is None:
            raise KeyError(f"no finding {finding_id}")
        row.cause, row.confirmation = cause, confirmation


def save_reference(db: Database, model: str, key: SeriesKey, artifact: dict[str, Any], measured: dict[str, Any]) -> int:
    """Store a frozen reference of one series' model; the newest one is the one used. An empty
    `artifact` records a failed attempt (the error in `measured`)."""
    with db.session() as session:
        model_id = model_id_of(session, model)
        row = ReferenceRow(
            model_id=model_id,
            variant_id=variant_id_of(session, model_id, key.variant),
            device=key.device,
            batch_size=key.batch_size,
            mode=key.mode,
            concurrency=key.concurrency,
            artifact=artifact,
            measured=measured,
        )
        session.add(row)
        session.flush()
        return row.id


def latest_reference(db: Database, model: str, key: SeriesKey) -> ReferenceInfo | None:
    """The newest reference of one series' model, if one was frozen."""
    stmt = (
        select(ReferenceRow)
        .join(ModelRow, ModelRow.id == ReferenceRow.model_id)
        .join(VariantRow, VariantRow.id == ReferenceRow.variant_id)
        .where(
            ModelRow.name == model,
            VariantRow.name == key.variant,
            ReferenceRow.device == key.device,
            ReferenceRow.batch_size == key.batch_size,
            ReferenceRow.mode == key.mode,
            ReferenceRow.concurrency == key.concurrency,
        )
        .order_by(ReferenceRow.created_at.desc(), ReferenceRow.id.desc())
        .limit(1)
    )
    with db.session(readonly=True) as session:
        row = session.scalar(stmt)
        if row is None:
            return None
        return ReferenceInfo(row.id, row.created_at, row.artifact, row.measured, row.lost_at, row.lost_reason)


def mark_reference_lost(db: Database, reference_id: int, reason: str) -> bool:
    """Record that a reference can no longer be timed, and why; False when it was lost already."""
    with db.session() as session:
        row = session.get(ReferenceRow, reference_id)
        if row is None or row.lost_at is not None:
            return False
        row.lost_at, row.lost_reason = utc_now(), reason[:2000]
        return True


def _record(row: FindingRow, model: str, variant: str) -> FindingRecord:
    return FindingRecord(
        model=model,
        key=SeriesKey(variant, row.device, row.batch_size, row.mode, row.concurrency),
        metric=row.metric,
        change=row.change,
        verdict=row.verdict,
        change_run_id=row.change_run_id,
        change_at=row.change_at,
        before=Level.from_dict(row.before),
        after=Level.from_dict(row.after),
        rel_change=row.rel_change,
        p_value=row.p_value,
        samples=SampleCheck.from_dict(row.samples) if row.samples is not None else None,
        env_diff=row.env_diff,
        cause=row.cause,
        confirmation=row.confirmation,
        diagnosis=Diagnosis.from_dict(row.diagnosis) if row.diagnosis is not None else None,
        state=row.state,
        resolution=row.resolution,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        resolved_at=row.resolved_at,
        id=row.id,
        reading=row.reading,
        kind=row.kind,
        drift=Drift.from_dict(row.drift) if row.drift is not None else None,
    )
