"""Recent runs of many models, per series, as light rows with every charted figure: what reports read.

One query for the whole fleet (the per-series limit applied in the database with ROW_NUMBER), so a
report over a hundred models with a thousand runs each reads the same way as one over two.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, Text, cast, func, select, type_coerce

from monitor.core.runs import FLAG_CONTENDED
from monitor.core.series import SeriesKey
from storage.db import Database
from storage.tables import ModelRow, RunMetricsRow, RunRow, VariantRow

# The figures a report charts, tabulates or checks against an SLO, in RunMetrics units.
CHARTED = (
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_mean",
    "throughput_per_s",
    "peak_rss_mb",
    "cuda_peak_mem_mb",
    "model_size_mb",
    "accuracy",
    "gpu_power_w",
    "energy_j_per_inference",
    "rel_to_reference",
    "probe_blas_ms",
    "probe_python_ms",
)

INDEX = {name: i for i, name in enumerate(CHARTED)}


@dataclass(frozen=True, slots=True)
class TrendRun:
    """One stored run as a report shows it: when, which series, how it ended, its figures."""

    run_id: int
    model: str
    started_at: datetime
    key: SeriesKey
    status: str
    error: str | None
    flags_json: str | None  # decoded only for the few runs a table shows (see `flags`)
    values: tuple[float | None, ...]  # one per name in CHARTED

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(json.loads(self.flags_json)) if self.flags_json else ()

    @property
    def usable(self) -> bool:
        """Successful and not taken on a busy host: what detection and the rules read (a substring
        test, not a decode: a fleet report asks it of 100k runs)."""
        return self.status == "ok" and not (self.flags_json and f'"{FLAG_CONTENDED}"' in self.flags_json)

    @property
    def figures(self) -> dict[str, float | None]:
        """The figures by name (built on demand: a fleet's history holds 100k runs)."""
        return dict(zip(CHARTED, self.values, strict=True))

    def figure(self, name: str) -> float | None:
        return self.values[INDEX[name]]


def recent_runs(db: Database, models: Sequence[str], per_series: int) -> dict[str, list[TrendRun]]:
    """The newest `per_series` runs of each series of each of `models`, oldest first, by model."""
    result: dict[str, list[TrendRun]] = {name: [] for name in models}
    if not models:
        return result
    rank = (
        func.row_number()
        .over(
            partition_by=(RunRow.model_id, RunRow.variant_id, RunRow.device, RunRow.batch_size, RunRow.mode,
                          RunRow.concurrency),
            order_by=(RunRow.started_at.desc(), RunRow.id.desc()),
        )
        .label("rank")
    )
    with db.session(readonly=True) as session:
        ids = {model_id: name for model_id, name in
               session.execute(select(ModelRow.id, ModelRow.name).where(ModelRow.name.in_(list(models))))}
        if not ids:
            return result
        newest = select(RunRow.id, rank).where(RunRow.model_id.in_(list(ids))).subquery()
        # A fleet's history is 100k rows: the JSON flags are read as text and decoded when shown, and
        # on SQLite the times are parsed by datetime.fromisoformat (C) rather than the dialect's regex:
        # together they are most of this query's Python time.
        raw_times = session.get_bind().dialect.name == "sqlite"
        started = type_coerce(RunRow.started_at, String) if raw_times else RunRow.started_at
        stmt = (
            select(
                RunRow.id, RunRow.model_id, started, VariantRow.name, RunRow.device, RunRow.batch_size,
                RunRow.mode, RunRow.concurrency, RunRow.status, RunRow.error, cast(RunRow.flags, Text),
                *(getattr(RunMetricsRow, name) for name in CHARTED),
            )
            .join(newest, newest.c.id == RunRow.id)
            .join(VariantRow, VariantRow.id == RunRow.variant_id)
            .outerjoin(RunMetricsRow, RunMetricsRow.run_id == RunRow.id)
            .where(newest.c.rank <= per_series)
            .order_by(RunRow.started_at, RunRow.id)
        )
        keys: dict[tuple[str, str, int, str, int], SeriesKey] = {}
        # Through the connection (Core), not the ORM session: no ORM row processing for 100k rows.
        rows: list[Any] = list(session.connection().execute(stmt).all())
        for row in rows:
            run_id, model_id, started_at, *series, status, error, flags = row[:11]
            figures = row[11:]
            parts = tuple(series)  # variant, device, batch size, mode, concurrency
            key = keys.get(parts)
            if key is None:
                key = keys[parts] = SeriesKey(*parts)
            name = ids[model_id]
            when = datetime.fromisoformat(started_at).replace(tzinfo=UTC) if raw_times else started_at
            result[name].append(TrendRun(run_id, name, when, key, status, error, flags, tuple(figures)))
    return result
