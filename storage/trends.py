"""Recent runs of many models, per series, as light rows with every charted figure: what reports read.

One query for the whole fleet (the per-series limit applied in the database with ROW_NUMBER), so a
report over a hundred models with a thousand runs each reads the same way as one over two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from storage.db import Database
from storage.findings import SeriesKey
from storage.models import ModelRow, RunMetricsRow, RunRow, VariantRow

# The figures a report charts or tabulates, in RunMetrics units.
CHARTED = (
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "throughput_per_s",
    "peak_rss_mb",
    "cuda_peak_mem_mb",
    "model_size_mb",
    "accuracy",
    "gpu_util_pct",
    "energy_j_per_inference",
)


@dataclass(frozen=True, slots=True)
class TrendRun:
    """One stored run as a report shows it: when, which series, how it ended, its figures."""

    run_id: int
    model: str
    started_at: datetime
    key: SeriesKey
    status: str
    error: str | None
    flags: tuple[str, ...]
    figures: dict[str, float | None]


def recent_runs(db: Database, models: Sequence[str], per_series: int) -> dict[str, list[TrendRun]]:
    """The newest `per_series` runs of each series of each of `models`, oldest first, by model."""
    result: dict[str, list[TrendRun]] = {name: [] for name in models}
    if not models:
        return result
    rank = (
        func.row_number()
        .over(
            partition_by=(RunRow.model_id, RunRow.variant_id, RunRow.device, RunRow.batch_size),
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
        stmt = (
            select(
                RunRow.id, RunRow.model_id, RunRow.started_at, VariantRow.name, RunRow.device, RunRow.batch_size,
                RunRow.status, RunRow.error, RunRow.flags, *(getattr(RunMetricsRow, name) for name in CHARTED),
            )
            .join(newest, newest.c.id == RunRow.id)
            .join(VariantRow, VariantRow.id == RunRow.variant_id)
            .outerjoin(RunMetricsRow, RunMetricsRow.run_id == RunRow.id)
            .where(newest.c.rank <= per_series)
            .order_by(RunRow.started_at, RunRow.id)
        )
        keys: dict[tuple[str, str, int], SeriesKey] = {}
        for run_id, model_id, started_at, variant, device, batch, status, error, flags, *figures in session.execute(stmt):
            key = keys.setdefault((variant, device, batch), SeriesKey(variant, device, batch))
            name = ids[model_id]
            result[name].append(TrendRun(run_id, name, started_at, key, status, error, tuple(flags),
                                         dict(zip(CHARTED, figures, strict=True))))
    return result
