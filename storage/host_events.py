"""Reads and writes of host events: the host itself got slower or faster (see monitor/detection/host.py).

Like findings, an event is kept up to date as runs arrive rather than duplicated: checking again
updates the open event of the same host and signal whose change began at about the same run, and an
event that is over (the signal is back near its old level) is resolved.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, func, select

from monitor.core.hosts import HostEventRecord, ProbeRun
from monitor.core.series import Level, SeriesState
from storage.db import Database
from storage.tables import HostEventRow, RunMetricsRow, RunRow, utc_now

# How far (in time) a change may move between checks and still be the same event.
SAME_EVENT_S = 6 * 3600.0
PROBE_FIGURES = ("probe_blas_ms", "probe_python_ms", "probe_cuda_ms")
BUSY = "others_cpu_pct"  # other processes' CPU use while a run sampled (HostCondition), % of one core


def probe_runs(db: Database, host: str, limit: int) -> list[ProbeRun]:
    """The newest `limit` successful runs on `host` that timed the probe (every model), oldest first."""
    columns = [getattr(RunMetricsRow, name) for name in PROBE_FIGURES]
    stmt = (
        select(RunRow.id, RunRow.started_at, RunRow.host, *columns)
        .join(RunMetricsRow, RunMetricsRow.run_id == RunRow.id)
        .where(RunRow.host_name == host, RunRow.status == "ok", RunMetricsRow.probe_blas_ms.is_not(None))
        .order_by(RunRow.started_at.desc(), RunRow.id.desc())
        .limit(limit)
    )
    with db.session(readonly=True) as session:
        rows = session.execute(stmt).all()
    return [
        ProbeRun(row[0], row[1], {**dict(zip(PROBE_FIGURES, row[3:], strict=True)), BUSY: (row[2] or {}).get(BUSY)})
        for row in reversed(rows)
    ]


def sync_host_events(
    db: Database, host: str, checked: dict[str, SeriesState], detected: Sequence[HostEventRecord]
) -> list[HostEventRecord]:
    """Merge detected events of the `checked` signals of `host` into the stored ones; the host's
    open events. An open event of a checked signal that was not detected again is resolved once the
    signal is back within half the minimum effect of its old level."""
    now = utc_now()
    with db.session() as session:
        rows = list(session.scalars(
            select(HostEventRow).where(HostEventRow.host_name == host, HostEventRow.state == "open",
                                       HostEventRow.signal.in_(list(checked)))
        ))
        matched: set[int] = set()
        for event in detected:
            row = next((r for r in rows if r.id not in matched and r.signal == event.signal and r.change == event.change
                        and abs((r.change_at - event.change_at).total_seconds()) <= SAME_EVENT_S), None)
            if row is None:
                row = HostEventRow(host_name=host, signal=event.signal, change=event.change, state="open",
                                   first_seen=now)
                session.add(row)
            row.change_run_id, row.change_at = event.change_run_id, event.change_at
            row.before, row.after = event.before.to_dict(), event.after.to_dict()
            row.rel_change, row.p_value, row.last_seen = event.rel_change, event.p_value, now
            session.flush()
            matched.add(row.id)
        for row in rows:
            state = checked.get(row.signal)
            if row.id not in matched and state is not None and not state.holds(row.before.get("median"), row.change):
                row.state, row.resolved_at = "resolved", now
    return host_events(db, host=host, state="open")


def host_events(db: Database, host: str | None = None, state: str | None = None) -> list[HostEventRecord]:
    """Stored host events (of one host, or all), newest change first."""
    stmt = select(HostEventRow).order_by(HostEventRow.change_at.desc(), HostEventRow.id.desc())
    if host is not None:
        stmt = stmt.where(HostEventRow.host_name == host)
    if state is not None:
        stmt = stmt.where(HostEventRow.state == state)
    with db.session(readonly=True) as session:
        return [_record(row) for row in session.scalars(stmt)]


def open_event_counts(db: Database) -> dict[str, int]:
    """Open host events of every host that has had one (0 once they are over), for /metrics."""
    is_open = case((HostEventRow.state == "open", 1), else_=0)
    stmt = select(HostEventRow.host_name, func.sum(is_open)).group_by(HostEventRow.host_name)
    with db.session(readonly=True) as session:
        return {host: int(count) for host, count in session.execute(stmt)}


def _record(row: HostEventRow) -> HostEventRecord:
    return HostEventRecord(
        host=row.host_name, signal=row.signal, change=row.change, change_run_id=row.change_run_id,
        change_at=row.change_at, before=Level.from_dict(row.before), after=Level.from_dict(row.after),
        rel_change=row.rel_change,
        p_value=row.p_value, state=row.state, first_seen=row.first_seen, last_seen=row.last_seen,
        resolved_at=row.resolved_at, id=row.id,
    )
