"""A model's stored series as detection reads them: the newest runs per series, split at the
accepted baseline, with the runs that count (successful, and not measured on a busy host)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from monitor.config import LoadedConfig
from monitor.core.runs import FLAG_CONTENDED
from monitor.core.series import Level, SeriesKey, SeriesRun
from monitor.harness.sampling import median_ci
from storage import findings as store
from storage.db import Database


@dataclass(frozen=True, slots=True)
class SeriesView:
    """One series of a model as detection reads it."""

    key: SeriesKey
    runs: list[SeriesRun]  # every stored run read (all statuses), oldest first
    current: list[SeriesRun]  # those since the accepted baseline, if any
    usable: list[SeriesRun]  # of those, the runs detection reads (see `usable_run`)

    def values(self, metric: str) -> np.ndarray:
        """The usable runs' figures of one metric, NaN where a run has none."""
        return figures(self.usable, metric)


def figures(runs: list[SeriesRun], metric: str) -> np.ndarray:
    """One figure of each run, NaN where a run has none."""
    return np.array([np.nan if (value := r.metrics.get(metric)) is None else value for r in runs], dtype=float)


def level(values: np.ndarray) -> Level:
    """A stretch of a series as findings and host events keep it: median, its 95 % interval, runs."""
    part = np.sort(values[np.isfinite(values)])
    low, high = median_ci(part.tolist())
    return Level(median=float(np.median(part)), low=float(low), high=float(high), runs=int(part.size))


def read_series(db: Database, loaded: LoadedConfig, model: str) -> list[SeriesView]:
    """The newest `[detection] history` runs of each series of `model`, split as detection needs."""
    settings = loaded.config.detection
    since = store.baselines(db, model)
    by_key: dict[SeriesKey, list[SeriesRun]] = defaultdict(list)
    for run in store.series_runs(db, model, settings.history):
        by_key[run.key].append(run)
    views = []
    for key, runs in by_key.items():
        current = [r for r in runs if r.started_at >= since[key]] if key in since else runs
        views.append(SeriesView(key, runs, current, [r for r in current if usable_run(r, settings.contended)]))
    return views


def usable_run(run: SeriesRun, contended: str) -> bool:
    """A run detection reads: successful and, unless configured otherwise, not on a busy host."""
    if run.status != "ok":
        return False
    return contended == "include" or FLAG_CONTENDED not in run.flags
