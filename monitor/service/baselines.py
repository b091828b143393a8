"""`perfguard baseline accept`: after an intended change, make a model's current level its baseline
and freeze a new reference for each series accepted, so that later runs are timed against the model
as it now is."""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.config import LoadedConfig
from monitor.detection.attribution import freeze_reference, series_key
from monitor.detection.baseline import AcceptedSegment, accept
from monitor.harness.worker_pool import WorkerPool
from monitor.registry import inference_series
from storage.db import Database


@dataclass(slots=True)
class AcceptedBaseline:
    """The series whose baseline moved, and the reference frozen for each (None where freezing failed;
    none at all for a model no longer configured, which has no factory to freeze)."""

    segments: list[AcceptedSegment]
    references: list[int | None] = field(default_factory=list)  # the stored references' ids

    @property
    def all_frozen(self) -> bool:
        return all(r is not None for r in self.references)


def accept_baseline(
    db: Database, loaded: LoadedConfig, model: str, note: str | None, pool: WorkerPool | None = None
) -> AcceptedBaseline:
    """Accept `model`'s current level as its baseline (NoRunsError when it has no usable runs), then
    freeze each accepted series' reference."""
    done = AcceptedBaseline(accept(db, loaded, model, note))
    if model not in {m.name for m in loaded.config.models}:
        return done
    accepted = {s.key for s in done.segments}
    for planned in inference_series(db, loaded, [model]):
        key = series_key(db, planned)
        if key in accepted:
            done.references.append(freeze_reference(db, loaded, planned, key, pool=pool))
    return done
