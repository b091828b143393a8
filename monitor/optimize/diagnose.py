"""Profile the current variant of a series (beside its frozen reference when it has one) in a worker,
and keep the diff (optimize/diagnosis.py) with the finding it explains. The optimisation action
orders its recipes by it; rules read it as the context's `profile`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from monitor.config import LoadedConfig
from monitor.core.diagnosis import Diagnosis
from monitor.core.series import FindingRecord
from monitor.harness.cpu_info import cpu_flags
from monitor.harness.protocol import (
    REFERENCE_LABEL,
    ArtifactRef,
    ProfileJob,
)
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize import diagnosis
from monitor.registry import PlannedBenchmark, run_with_limits
from storage import actions as store
from storage import findings as findings_store
from storage.db import Database

CURRENT_LABEL = "current"  # the live model's label in profile and candidates jobs


@dataclass(slots=True)
class Profiled:
    diagnosis: Diagnosis | None
    cpu_flags: list[str]
    error: str | None = None


def diagnose(
    db: Database,
    loaded: LoadedConfig,
    planned: PlannedBenchmark,
    finding: FindingRecord | None,
    cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> Profiled:
    """Profile the current variant (beside its frozen reference when the series has one) and keep
    the diff with the finding, replacing an older one (the model may have changed since)."""
    current = replace(planned.job.subjects[0], label=CURRENT_LABEL)
    subjects = [current]
    key = planned.key
    reference = findings_store.latest_reference(db, planned.model.name, key)
    if reference is not None and reference.artifact:
        artifact = ArtifactRef.from_dict(reference.artifact)
        subjects.append(replace(current, label=REFERENCE_LABEL, eval=None, artifact=artifact))
    outcome = run_with_limits(
        loaded, planned, planned.job.as_job(ProfileJob, subjects=subjects), len(subjects), cancel, pool
    )
    result = outcome.result
    if outcome.status != "ok" or result is None or result.profiles is None:
        flags = list(outcome.env.cpu_flags) if outcome.env is not None else cpu_flags()
        return Profiled(
            finding.diagnosis if finding else None, flags, (outcome.error or outcome.status).splitlines()[0]
        )
    found = replace(diagnosis.compare(result.profiles[CURRENT_LABEL], result.profiles.get(REFERENCE_LABEL)),
                    series=key.label())
    if reference is not None and reference.artifact:
        kind = reference.artifact.get("kind")
        weights_only = "the reference holds weights only: a change in the model's code cannot show"
        found = replace(found, reference_kind=kind, note=weights_only if kind == "state_dict" else None)
    if finding is not None and finding.id is not None:
        store.set_diagnosis(db, finding.id, found)
    return Profiled(found, list(result.env.cpu_flags))


