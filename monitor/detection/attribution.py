"""Model or environment? Frozen references and the A/B that tells the two apart.

When a series gets its baseline, a frozen copy of the model that produced it is written (exported
program, else TorchScript, else state dict + factory; see monitor/harness/reference.py) and timed
interleaved with the live model: `r0 = reference / live`. When a latency regression is found, the
reference and the current model are timed interleaved again in one worker: `r1 = reference / current`.

- r0 / r1 - 1 is how much slower the *current model* got relative to its frozen self. Host drift,
  library upgrades and thread settings slow both alike and cancel in the ratio.
- The reference's own latency now, against the old level, says whether the host or environment moved.

A model change explaining at least half the regression -> `model`; a reference that slowed down by at
least half the regression while the model changed little (within noise, or under a fifth of the
regression) -> `environment`; anything else (the slowdown not reproduced, or split between both) ->
`unknown`. "Half" is read on the log scale, where slowdowns
compose: a model 5x slower explains more than half of an 11x regression (the linear reading, 4 of
10, would not, and left big code changes `unknown` whenever the copy timed a little slow beside them).

A state-dict reference (the fallback when neither torch.export nor TorchScript can freeze the model)
holds weights only, so it cannot clear the model's code: "both slowed down" stays `unknown` with it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from monitor.config import LoadedConfig, ModelConfig
from monitor.core.series import FindingRecord, ReferenceInfo, SeriesKey
from monitor.detection.check import detection_options
from monitor.harness.artifacts import damaged
from monitor.harness.protocol import REFERENCE_LABEL, ArtifactRef, CompareJob, FreezeJob
from monitor.harness.worker_pool import WorkerPool
from monitor.registry import PlannedBenchmark, UnknownModelError, inference_series, run_with_limits
from storage import findings as store
from storage import queries
from storage.db import Database

log = logging.getLogger(__name__)

CURRENT_LABEL = "current"
MINOR_SHARE = 0.2  # a model change under this share of the regression (log scale) does not explain it
MAX_ATTEMPTS = 3  # A/B runs tried for one finding before it is left without a cause
RETRY_FREEZE_S = 3600.0  # after a failed freeze of a series, the next try waits this long
# The A/B times medians, so it judges findings of the median latency (a p99 finding of the same change
# would only repeat the A/B, with the wrong level to compare against).
ATTRIBUTED_METRIC = "latency_ms_p50"


@dataclass(frozen=True, slots=True)
class Attribution:
    """The verdict of one A/B against the reference, with the numbers behind it."""

    cause: str | None  # model | environment | unknown; None: the A/B could not be run
    confirmation: dict[str, Any]


def references_wanted(loaded: LoadedConfig) -> bool:
    """Whether series get frozen references: for relative runs, or for A/B attribution."""
    return loaded.config.harness.relative or loaded.config.detection.confirm


def ensure_references(
    db: Database, loaded: LoadedConfig, names: list[str] | None = None, cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> list[SeriesKey]:
    """Freeze a reference for every planned series of the active variant that has none yet.

    A series with an open latency regression is skipped: the model now is not the one that made the
    baseline, so a copy of it would explain nothing (`perfguard baseline accept` freezes anew).
    """
    frozen = []
    now = datetime.now(UTC)
    for planned in inference_series(db, loaded, names):
        key = series_key(db, planned)
        if key is None:
            continue
        if not _has_ok_run(db, planned.model.name, key):
            continue  # no baseline yet (never run, or every run failed): nothing worth freezing
        latest = store.latest_reference(db, planned.model.name, key)
        # Lost because its file changed or vanished on disk, not because the libraries no longer
        # reproduce it: freezing the same model again, while no regression is open, loses nothing
        # (after an upgrade it would hide the very change the reference must show).
        refreeze = latest is not None and latest.lost_at is not None and damaged(latest.lost_reason)
        if latest is not None and not refreeze and (
                latest.artifact or (now - latest.created_at).total_seconds() < RETRY_FREEZE_S):
            continue  # frozen, or failed to freeze lately: not one extra worker per scheduled run
        regressed = any(
            f.key == key and f.metric == ATTRIBUTED_METRIC and f.verdict == "regression"
            for f in store.findings(db, planned.model.name, state="open")
        )
        if regressed:
            log.info("not freezing %s %s: it has an open latency regression", planned.model.name, key.label())
            continue
        if cancel is not None and cancel.is_set():
            break
        if refreeze:
            assert latest is not None
            log.warning("%s %s: reference %d was damaged (%s); freezing the model anew at this stable point",
                        planned.model.name, key.label(), latest.id, latest.lost_reason)
        ref_id = freeze_reference(db, loaded, planned, key, cancel, pool)
        if ref_id is not None:
            frozen.append(key)
            if refreeze:
                assert latest is not None
                _note_refrozen(db, planned.model.name, key, latest.id, ref_id)
    return frozen


def _note_refrozen(db: Database, model: str, key: SeriesKey, lost_id: int, new_id: int) -> None:
    """Findings left unattributed by a damaged reference say which reference replaced it, and when."""
    for finding in store.findings(db, model):
        c = finding.confirmation or {}
        if (
            finding.id is not None
            and finding.key == key
            and c.get("reference_lost")
            and c.get("reference_id") == lost_id
        ):
            store.set_cause(
                db,
                finding.id,
                finding.cause,
                {**c, "refrozen_as": new_id, "refrozen_at": datetime.now(UTC).isoformat()},
            )


def freeze_reference(
    db: Database,
    loaded: LoadedConfig,
    planned: PlannedBenchmark,
    key: SeriesKey,
    cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> int | None:
    """Freeze the model of one series now and store the reference; None (logged) when it fails."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = (
        loaded.base_dir
        / loaded.config.detection.artifact_dir
        / planned.model.name
        / key.variant
        / key.device.replace(":", "_")
        / f"b{key.batch_size}"
        / stamp
    )
    job = planned.job.as_job(FreezeJob, freeze_dir=str(folder), probe=planned.job.probe)
    outcome = run_with_limits(loaded, planned, job, 2, cancel, pool, scale_memory=False)  # model and copy
    result = outcome.result
    ratio = ((result.comparison if result is not None else None) or {}).get(REFERENCE_LABEL, {})
    failure = None
    if outcome.status != "ok" or result is None or result.frozen is None:
        failure = outcome.error or outcome.status
    elif ratio.get("ratio_p50") is None:
        failure = "no A/B rounds of the model and its copy"  # without its baseline ratio it judges nothing
    if failure is not None:
        log.warning("could not freeze a reference of %s %s: %s", planned.model.name, key.label(), failure)
        # Recorded as an attempt with no artifact, so that the next try waits RETRY_FREEZE_S.
        store.save_reference(db, planned.model.name, key, {}, {"error": failure[-2000:]})
        return None
    assert result is not None and result.frozen is not None
    live = result.subjects[0].metrics
    copy = result.subjects[1].metrics if len(result.subjects) > 1 else None
    measured = {
        "ratio": ratio.get("ratio_p50"),
        "ratio_ci95": ratio.get("ratio_ci95"),
        "ratio_contended": bool(ratio.get("contended")),  # read over busy rounds: none was clean
        "live_p50_ms": live.latency_ms_p50,
        "reference_p50_ms": copy.latency_ms_p50 if copy else None,
        # What the relative readings are scaled by (monitor/detection/readings.py).
        "reference_p99_ms": copy.latency_ms_p99 if copy else None,
        "probe_blas_ms": live.probe_blas_ms,
        "probe_python_ms": live.probe_python_ms,
        "env": result.env.to_dict(),
    }
    ref_id = store.save_reference(db, planned.model.name, key, result.frozen.to_dict(), measured)
    log.info("froze a %s reference of %s %s (id %d)", result.frozen.kind, planned.model.name, key.label(), ref_id)
    return ref_id


def attribute(
    db: Database,
    loaded: LoadedConfig,
    finding: FindingRecord,
    cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> Attribution | None:
    """A/B the current model against its reference for a latency finding; None without a reference."""
    reference = store.latest_reference(db, finding.model, finding.key)
    if reference is not None and (not reference.artifact or reference.lost_at is not None):
        reference = None  # the last freeze failed, or the copy no longer loads
    try:
        planned = next(
            (p for p in inference_series(db, loaded, [finding.model]) if p.job.batch_size == finding.key.batch_size),
            None,
        )
    except UnknownModelError:  # stored, but no longer configured: nothing to time it with
        planned = None
    if reference is None or planned is None or planned.job.device != finding.key.device:
        return None
    live = planned.job.subjects[0]
    subjects = [
        replace(live, label=CURRENT_LABEL),
        replace(live, label=REFERENCE_LABEL, eval=None, artifact=ArtifactRef.from_dict(reference.artifact)),
    ]
    job = planned.job.as_job(CompareJob, subjects=subjects)
    outcome = run_with_limits(loaded, planned, job, 2, cancel, pool, scale_memory=False)
    if outcome.status != "ok" or outcome.result is None:
        error = outcome.error or outcome.status
        numbers: dict[str, Any] = {"error": error, "reference_id": reference.id}
        if damaged(error):
            # The copy itself is gone: trying again cannot help. It is lost (relative runs stop
            # timing it) and frozen anew at the next stable point (ensure_references).
            store.mark_reference_lost(db, reference.id, error)
            numbers["reference_lost"] = next((line.strip() for line in error.splitlines() if damaged(line)), error)
        return Attribution(None, numbers)
    result = outcome.result
    measured = last_measurement(db, finding, reference)
    return judge(
        finding,
        measured,
        result.comparison or {},
        {s.label: s.metrics.latency_ms_p50 for s in result.subjects},
        reference.id,
        _min_effect(loaded, planned.model, finding.metric),
        reference.artifact.get("kind", ""),
    )


def last_measurement(db: Database, finding: FindingRecord, reference: ReferenceInfo) -> dict[str, Any]:
    """What the model and its copy measured when the level before `finding` was set.

    That is the freeze, unless an earlier regression of the series, still open, was A/B-timed against
    the same copy since: then the level before this finding is that regression's, and its A/B (ratio
    and copy's time) is the baseline to compare with. Otherwise a model that regressed once would be
    blamed again for every later slowdown, whatever caused it.
    """
    earlier = [
        f
        for f in store.findings(db, finding.model, state="open")
        if f.key == finding.key
        and f.metric == finding.metric
        and f.id != finding.id
        and f.change_at < finding.change_at
        and f.confirmation
        and f.confirmation.get("reference_id") == reference.id
        and f.confirmation.get("ratio")
    ]
    if not earlier:
        return reference.measured
    latest = max(earlier, key=lambda f: f.change_at).confirmation or {}
    return {
        "ratio": latest.get("ratio"),
        "reference_p50_ms": latest.get("reference_p50_ms"),
        "from_finding": latest.get("finding_id"),
    }


def judge(
    finding: FindingRecord,
    measured: dict[str, Any],
    comparison: dict[str, Any],
    p50s: dict[str, float | None],
    reference_id: int,
    min_effect: float,
    kind: str = "exported",
) -> Attribution:
    """The cause of a latency finding from the A/B numbers (see the module docstring)."""
    r0 = measured.get("ratio")
    now = comparison.get(REFERENCE_LABEL, {})
    r1 = now.get("ratio_p50")
    ci = now.get("ratio_ci95")
    numbers: dict[str, Any] = {
        "finding_id": finding.id,
        "baseline_from_finding": measured.get("from_finding"),
        "reference_id": reference_id,
        "reference_kind": kind,
        "baseline_ratio": r0,
        "ratio": r1,
        "ratio_ci95": ci,
        "current_p50_ms": p50s.get(CURRENT_LABEL),
        "reference_p50_ms": p50s.get(REFERENCE_LABEL),
        "before_p50_ms": finding.before.median,
        "after_p50_ms": finding.after.median,
    }
    if not r0 or not r1:
        return Attribution("unknown", {**numbers, "why": "no usable ratio"})
    model_change = r0 / r1 - 1.0
    # The model's interval from the ratio's: a wider one makes "no model change" harder to claim.
    model_interval = [r0 / ci[1] - 1.0, r0 / ci[0] - 1.0] if ci else None
    env_change = _environment_change(finding, measured, p50s.get(REFERENCE_LABEL), r0)
    numbers.update(model_change=model_change, model_change_ci95=model_interval, environment_change=env_change)
    same_way = (model_change > 0) == (finding.rel_change > 0)
    if same_way and abs(model_change) >= min_effect and _log_share(model_change, finding.rel_change) >= 0.5:
        return Attribution("model", {**numbers, "why": "the current model is slower than its frozen copy"})
    model_flat = abs(model_change) < min_effect and (
        model_interval is None or model_interval[0] < 0 < model_interval[1] or abs(model_change) < min_effect / 2
    )
    # A model change can be real and still beside the point: 5 % of a 2.6x slowdown, measured on a
    # loaded host whose A/B interval is narrower than its noise, must not hide the host's 2.5x.
    model_minor = model_flat or abs(_log_share(model_change, finding.rel_change)) < MINOR_SHARE
    env_same_way = env_change is not None and (env_change > 0) == (finding.rel_change > 0)
    if (model_minor and env_same_way and env_change is not None and abs(env_change) >= min_effect
            and _log_share(env_change, finding.rel_change) >= 0.5):
        if kind == "state_dict":
            # Such a copy freezes the weights only; its code comes from the factory, so a code
            # regression would slow it down too and pass for a host change.
            return Attribution("unknown", {**numbers, "why": "both slowed down, but the copy holds weights only"})
        return Attribution("environment", {**numbers, "why": "the frozen copy slowed down as much"})
    return Attribution("unknown", {**numbers, "why": "neither the model nor the reference explains it"})


def _environment_change(
    finding: FindingRecord, measured: dict[str, Any], ref_now: float | None, r0: float
) -> float | None:
    """How much slower the frozen copy runs now than when it was frozen, both times timed interleaved
    with a live model (like with like); else against the series' old level, less the copy's overhead."""
    ref_then = measured.get("reference_p50_ms")
    before = finding.before.median
    if ref_now and ref_then:
        return float(ref_now / ref_then - 1.0)
    return (ref_now / r0) / before - 1.0 if ref_now and before else None


def _log_share(change: float, total: float) -> float:
    """How much of a relative change `total` a relative change `change` makes, on the log scale."""
    return math.log1p(change) / math.log1p(total) if total else 0.0


def confirm_pending(
    db: Database,
    loaded: LoadedConfig,
    findings: list[FindingRecord],
    cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> list[FindingRecord]:
    """Attribute each open p50 regression among `findings` that has no cause yet; return those judged.

    An A/B that could not run (the worker failed, or a stop cancelled it) leaves the finding pending,
    with the error and the attempt counted in its confirmation; it is tried again after the next
    run, at most MAX_ATTEMPTS times.
    """
    done = []
    for finding in findings:
        if finding.id is None or finding.cause is not None or finding.state != "open":
            continue
        if finding.verdict != "regression" or finding.metric != ATTRIBUTED_METRIC or finding.reading != "absolute":
            continue  # a relative reading's finding carries its cause already
        if not finding.key.is_inference:
            continue  # no frozen copy times a training step or a load level
        attempts = int((finding.confirmation or {}).get("attempts", 0))
        if attempts >= MAX_ATTEMPTS:
            continue
        if cancel is not None and cancel.is_set():
            break
        verdict = attribute(db, loaded, finding, cancel, pool)
        if verdict is None:
            continue
        if verdict.cause is None:
            lost = bool(verdict.confirmation.get("reference_lost"))
            numbers = {**verdict.confirmation, "attempts": MAX_ATTEMPTS if lost else attempts + 1}
            store.set_cause(db, finding.id, None, numbers)
            if lost:
                log.warning(
                    "finding %d (%s): its reference %s was damaged, so nothing can attribute it; a new "
                    "reference is frozen at the next stable point: %s",
                    finding.id,
                    finding.model,
                    numbers.get("reference_id"),
                    numbers["reference_lost"],
                )
            else:
                log.warning("finding %d (%s): the A/B did not run: %s", finding.id, finding.model, numbers.get("error"))
            continue
        store.set_cause(db, finding.id, verdict.cause, verdict.confirmation)
        log.info("finding %d (%s %s): cause %s", finding.id, finding.model, finding.metric, verdict.cause)
        done.append(replace(finding, cause=verdict.cause, confirmation=verdict.confirmation))
    return done


def _has_ok_run(db: Database, model: str, key: SeriesKey, recent: int = 50) -> bool:
    return any(
        r.status == "ok" and r.variant == key.variant and r.device == key.device
        for r in queries.history(db, model, limit=recent, batch_size=key.batch_size, mode=key.mode)
    )


def series_key(db: Database, planned: PlannedBenchmark) -> SeriesKey | None:
    """The series a planned inference benchmark stores into: the model's active variant, device, batch size."""
    try:
        with db.session(readonly=True) as session:
            variant = queries.active_variant(session, planned.model.name)
    except LookupError:
        return None
    return replace(planned.key, variant=variant)


def _min_effect(loaded: LoadedConfig, model: ModelConfig, metric: str) -> float:
    return detection_options(loaded, model, metric).min_effect
