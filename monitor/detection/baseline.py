"""Accepting a baseline: after an intended change, the current level of each series becomes normal.

By default a finding compares against the last stable segment before its change. `perfguard
baseline accept MODEL` says "this is how it should be now": for each series of the model, detection
from then on reads only the runs of its current segment (since the newest change of any watched
metric), and the model's open findings are resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from monitor.config import LoadedConfig
from monitor.core.series import SeriesKey, SeriesRun
from monitor.detection.changepoints import detect_changes
from monitor.detection.check import detection_options
from monitor.detection.readings import series_readings
from monitor.detection.series import read_series
from storage import findings as store
from storage.db import Database


@dataclass(frozen=True, slots=True)
class AcceptedSegment:
    """Where a series' new baseline starts."""

    key: SeriesKey
    run_id: int
    started_at: datetime
    runs: int  # usable runs in the segment so far


class NoRunsError(LookupError):
    """The model has no successful runs to make a baseline of."""


def current_segments(db: Database, loaded: LoadedConfig, model: str) -> list[AcceptedSegment]:
    """The current segment of each series of `model`: from its newest change in any of its readings."""
    config = next((m for m in loaded.config.models if m.name == model), None)
    segments = []
    views = read_series(db, loaded, model)
    for view in views:
        runs = view.usable
        if not runs:
            continue
        first = runs[0]
        reference = store.latest_reference(db, model, view.key)
        for reading in series_readings(view, reference):
            values = reading.values
            if np.isfinite(values).any():
                points = detect_changes(values, options=detection_options(loaded, config, reading.metric, reading.name))
                if points and reading.runs[points[-1].index].started_at > first.started_at:
                    first = reading.runs[points[-1].index]
        segments.append(AcceptedSegment(view.key, first.run_id, first.started_at,
                                        sum(r.started_at >= first.started_at for r in runs)))
    if not segments:
        raise NoRunsError(_why_no_runs(model, [r for v in views for r in v.current]))
    return segments


def _why_no_runs(model: str, runs: list[SeriesRun]) -> str:
    """Which of the three cases it is: nothing stored, nothing successful, or only busy-host runs."""
    if not runs:
        return f"model {model!r} has no stored runs to accept as its baseline"
    ok = [r for r in runs if r.status == "ok"]
    if not ok:
        return f"model {model!r} has no successful runs to accept as its baseline ({len(runs)} failed)"
    return (f"model {model!r} has only runs taken on a busy host ({len(ok)} contended, see detection.contended): "
            "run it again when the host is quiet, then accept")


def accept(db: Database, loaded: LoadedConfig, model: str, note: str | None = None) -> list[AcceptedSegment]:
    """Make the current segment of every series of `model` its baseline; resolve open findings."""
    segments = current_segments(db, loaded, model)
    store.accept_baselines(db, model, {s.key: (s.run_id, s.started_at) for s in segments}, note)
    return segments
