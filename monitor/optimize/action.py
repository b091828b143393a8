"""The optimisation action: diagnose, build candidates, time them beside the current variant, decide.

One call of `optimize` is one recorded action:
1. profile the current variant (and its frozen reference when the series has one) -> diagnosis;
2. pick the recipes that suit the device, the CPU and where the time goes (catalog + diagnosis);
3. one worker builds every candidate from the current variant, saves it, reloads it from disk and
   times it interleaved with the current variant (A/B), with accuracy or output fidelity;
4. each candidate is judged (decision.py); the best accepted one must also not be slower at the
   model's other batch sizes (one A/B each);
5. the decision is stored with every candidate's numbers; an accepted candidate becomes the active
   variant (unless dry run) and the promotion hook is told. Rejected candidates' files are removed.
The parent never imports torch: building and timing happen in workers.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.config import LoadedConfig, ModelConfig, OptimizeConfig
from monitor.core import catalog
from monitor.core.actions import ActionRecord, CandidateNumbers, Fidelity, Promotion, Verdict
from monitor.core.diagnosis import Diagnosis
from monitor.core.series import FindingRecord
from monitor.harness.protocol import (
    CandidateRequest,
    CandidatesJob,
    CompareJob,
    VariantSpec,
    WorkerResult,
)
from monitor.harness.runner import ProgressCallback, WorkerOutcome
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize import diagnosis
from monitor.optimize.decision import best, judge
from monitor.optimize.diagnose import CURRENT_LABEL, diagnose
from monitor.optimize.promotion_hook import notify
from monitor.registry import PlannedBenchmark, inference_series, run_with_limits
from storage import actions as store
from storage import queries
from storage.db import Database

log = logging.getLogger(__name__)

COMPILE_ALLOWANCE_S = 180.0  # torch.compile's first call, per compiling candidate, on top of the timeout


class OptimizeError(Exception):
    """An optimisation that cannot start (unknown model or recipe, nothing to try)."""


@dataclass(frozen=True, slots=True)
class OptimizeRequest:
    """What to try for one model: an action kind, or explicit recipes, and why."""

    model: str
    action: catalog.Action | None = "requantize"  # None with recipes: exactly those
    recipes: tuple[str, ...] = ()
    params: dict[str, dict[str, Any]] | None = None  # recipe -> params
    trigger: str = "cli"
    finding: FindingRecord | None = None
    dry_run: bool | None = None  # None: the config's


def optimize(
    db: Database, loaded: LoadedConfig, request: OptimizeRequest, cancel: threading.Event | None = None,
    pool: WorkerPool | None = None, progress: ProgressCallback | None = None,
) -> ActionRecord:
    """Run one optimisation action for a model and record it (see the module docstring). `progress`
    hears the candidates job's phases (a distillation's epochs among them); by default, logged."""
    try:
        model = loaded.config.model(request.model)
    except KeyError:
        raise OptimizeError(f"unknown model {request.model!r}") from None
    settings = loaded.config.optimize.for_model(model.optimize)
    dry_run = settings.dry_run if request.dry_run is None else request.dry_run
    with db.session() as session:
        queries.register_model(session, model.name, model.factory, model.device)
    series = inference_series(db, loaded, [model.name])
    primary = _primary(series, request.finding)
    current = primary.job.subjects[0].variant or VariantSpec(name="baseline")
    unknown = [name for name in request.recipes if name not in catalog.RECIPES]
    # Named recipes decide the kind (a prune recipe prunes whatever the request says).
    kind = catalog.RECIPES[request.recipes[0]].action if request.recipes and not unknown else (
        request.action or "requantize")
    record = ActionRecord(model=model.name, kind=kind, trigger=request.trigger, status="failed", reason="",
                          from_variant=current.name, finding_id=request.finding.id if request.finding else None)
    refused = _refused(unknown, model, kind == "distill" or "distill" in request.recipes)
    if refused is not None:
        return store.record_action(db, replace(record, status="rejected", reason=refused))
    if model.distill is not None:
        request = _with_student(request, model.distill_params())
    profiled = diagnose(db, loaded, primary, request.finding, cancel, pool)
    record = replace(record, diagnosis=profiled.diagnosis)
    if profiled.error is not None:
        # The candidates are still worth measuring; they are just not ordered by where the time goes.
        log.warning("could not profile %s, trying recipes in catalog order: %s", model.name, profiled.error)
        record = replace(record, diagnosis=replace(record.diagnosis or Diagnosis(), error=profiled.error))
    specs = choose_recipes(request, settings, primary.job.device, profiled.cpu_flags, profiled.diagnosis, current)
    if not specs:
        reason = f"no suitable recipe for {primary.job.device} (asked: {', '.join(request.recipes) or kind})"
        return store.record_action(db, replace(record, status="rejected", reason=reason))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folder = loaded.base_dir / loaded.config.detection.artifact_dir / model.name / "candidates" / stamp
    outcome = _run_candidates(loaded, primary, specs, request, settings, folder, cancel, pool,
                              progress or _logged(model.name))
    if outcome.status != "ok" or outcome.result is None:
        reason = f"the candidates job failed: {(outcome.error or outcome.status).splitlines()[0]}"
        shutil.rmtree(folder, ignore_errors=True)
        return store.record_action(db, replace(record, reason=reason))
    verdicts = [judge(n, settings) for n in measured(outcome.result, primary.job.batch_size)]
    verdicts, chosen = _confirm_elsewhere(loaded, series, primary, verdicts, cancel, pool)
    record, promotion = _decide(record, verdicts, chosen, dry_run, primary.job.batch_size, current)
    try:
        record = store.record_action(db, record, promotion)
    finally:
        # Only the promoted candidate's weights are kept: no row would name any other file.
        _remove_unkept(folder, chosen if record.to_variant is not None else None)
    log.info("optimize %s (%s): %s: %s", model.name, request.trigger, record.status, record.reason)
    if record.to_variant is not None and settings.on_promote is not None and promotion is not None:
        notify(settings.on_promote, record, replace(promotion, name=record.to_variant,
                                                     spec={**promotion.spec, "name": record.to_variant}))
    return record


def _refused(unknown: list[str], model: ModelConfig, distilling: bool) -> str | None:
    """Why the action cannot start: a recipe the catalog does not know, or a distillation without a student."""
    if unknown:
        return f"unknown recipe {unknown[0]!r}; known: {', '.join(catalog.RECIPES)}"
    if distilling and model.distill is None:
        return (f"model {model.name!r} names no student to distill into: add distill = {{ student = "
                '"pkg.mod:factory", data = "pkg.mod:batches" } to its config')
    return None


def _decide(
    record: ActionRecord, verdicts: list[Verdict], chosen: Verdict | None, dry_run: bool, batch_size: int,
    current: VariantSpec,
) -> tuple[ActionRecord, Promotion | None]:
    """The action's outcome from its candidates' verdicts: rejected with every reason, or accepted
    (a dry run promotes nothing) with the variant to promote."""
    record = replace(record, candidates=list(verdicts))
    if chosen is None:
        reason = "no candidate was really better: " + "; ".join(
            f"{v.numbers.label}: {', '.join(v.reasons)}" for v in verdicts
        )
        return replace(record, status="rejected", reason=reason), None
    n = chosen.numbers
    record = replace(record, status="dry_run" if dry_run else "accepted",
                     reason=(f"{n.recipe}: {n.speedup:.2f}x faster at batch {batch_size} "
                             f"(p50 {n.current_p50_ms:.4g} -> {n.p50_ms:.4g} ms), {_quality(n)}"))
    if dry_run:
        return record, None
    assert n.variant is not None
    promotion = Promotion(name=f"{current.name}+{n.recipe}", kind=record.kind, spec=n.variant,
                          numbers=chosen.to_dict())
    return record, promotion






def choose_recipes(
    request: OptimizeRequest,
    settings: OptimizeConfig,
    device: str,
    cpu_flags: list[str],
    found: Diagnosis | None,
    current: VariantSpec,
) -> list[catalog.RecipeSpec]:
    """The recipes to try, best-suited first: asked ones as given, else the catalog's defaults for
    this action, device and CPU, not already applied to the current variant, ordered by diagnosis."""
    if request.recipes:  # as asked, once each: a rule or a person named them on purpose
        return [catalog.recipe(name) for name in dict.fromkeys(request.recipes)]
    kind = catalog.device_kind(device)
    applied = {step.recipe for step in current.steps}
    allowed = set(settings.recipes) if settings.recipes is not None else None
    specs = [
        s
        for s in catalog.CATALOG
        if s.action == request.action
        and s.by_default
        and kind in s.devices
        and s.name not in applied
        and (allowed is None or s.name in allowed)
        and (not s.cpu_flags or kind != "cpu" or any(f in cpu_flags for f in s.cpu_flags))
        and (s.needs is None or importlib.util.find_spec(s.needs) is not None)
    ]
    return diagnosis.order_recipes(specs, found)[: settings.max_candidates]


def measured(result: WorkerResult, batch_size: int) -> list[CandidateNumbers]:
    """Each candidate's numbers from a candidates job: A/B ratio, latency, size, accuracy, fidelity."""
    subjects = {s.label: s for s in result.subjects}
    current = subjects[CURRENT_LABEL].metrics
    comparison = result.comparison or {}
    numbers = []
    for built in result.built or []:
        n = CandidateNumbers(
            label=built.label,
            recipe=built.recipe,
            error=built.error,
            variant=built.variant,
            fidelity=None if built.fidelity is None else Fidelity.from_dict(built.fidelity),
            build_s=built.build_s,
            details={**built.details, "batch_size": batch_size},
            current_p50_ms=current.latency_ms_p50,
            current_p99_ms=current.latency_ms_p99,
            current_size_mb=current.model_size_mb,
            current_accuracy=current.accuracy,
            current_forward_peak_mb=subjects[CURRENT_LABEL].details.get("forward_peak_mb"),
        )
        timed = subjects.get(built.label)
        if built.error is None and timed is not None:
            ratio = comparison.get(built.label, {})
            interval = ratio.get("ratio_ci95")
            if ratio.get("contended"):
                n.details["latency_contended"] = True  # compared over busy rounds: none was clean
            n = replace(
                n, ratio_p50=ratio.get("ratio_p50"), ratio_ci95=None if interval is None else tuple(interval),
                p50_ms=timed.metrics.latency_ms_p50, p99_ms=timed.metrics.latency_ms_p99,
                size_mb=timed.metrics.model_size_mb, accuracy=timed.metrics.accuracy,
                forward_peak_mb=timed.details.get("forward_peak_mb"),
            )
        elif built.error is None:
            n = replace(n, error="built but not timed")
        numbers.append(n)
    return numbers




def _primary(series: list[PlannedBenchmark], finding: FindingRecord | None) -> PlannedBenchmark:
    """The series the candidates are built and judged on: the finding's, else the largest batch."""
    if finding is not None:
        for planned in series:
            if planned.job.batch_size == finding.key.batch_size and planned.job.device == finding.key.device:
                return planned
    return max(series, key=lambda p: p.job.batch_size)


def _run_candidates(
    loaded: LoadedConfig,
    planned: PlannedBenchmark,
    specs: list[catalog.RecipeSpec],
    request: OptimizeRequest,
    settings: OptimizeConfig,
    folder: Path,
    cancel: threading.Event | None,
    pool: WorkerPool | None,
    progress: ProgressCallback,
) -> WorkerOutcome:
    subjects = [replace(planned.job.subjects[0], label=CURRENT_LABEL)]
    wanted = [CandidateRequest(s.name, s.name, dict((request.params or {}).get(s.name, {}))) for s in specs]
    # Each subject gets about as many samples as a scheduled run of the model alone would.
    sampling = replace(planned.job.sampling, max_time_s=planned.job.sampling.max_time_s * (1 + len(wanted)) / 2)
    job = planned.job.as_job(
        CandidatesJob,
        subjects=subjects,
        candidates=wanted,
        candidates_dir=str(folder),
        train=planned.model.fine_tune,
        fidelity=settings.fidelity,
        sampling=sampling,
    )
    return run_with_limits(
        loaded,
        planned,
        job,
        1 + len(wanted),
        cancel,
        pool,
        extra_s=COMPILE_ALLOWANCE_S * sum(s.compiles for s in specs) + _training_s(request, specs),
        progress=progress,
    )


def _with_student(request: OptimizeRequest, configured: dict[str, Any]) -> OptimizeRequest:
    """The request with the distill recipe's params: the model's `distill` table, then what was asked
    (unused unless the distill recipe is chosen)."""
    asked = dict(request.params or {})
    return replace(request, params={**asked, "distill": {**configured, **asked.get("distill", {})}})


def _logged(model: str) -> ProgressCallback:
    """A progress callback that logs each new phase of a candidates job (the daemon's log lines)."""
    seen: list[str] = []

    def note(phase: str, samples: int) -> None:
        if not seen or seen[-1] != phase:
            seen.append(phase)
            log.info("optimize %s: %s", model, phase)

    return note


def _training_s(request: OptimizeRequest, specs: list[catalog.RecipeSpec]) -> float:
    """The time bound of recipes that train (distill), with slack for the epoch in flight: the worker's
    limit grows by it."""
    if not any(s.name == "distill" for s in specs):
        return 0.0
    return 1.5 * float((request.params or {}).get("distill", {}).get("max_time_s", 60.0))


def _confirm_elsewhere(
    loaded: LoadedConfig,
    series: list[PlannedBenchmark],
    primary: PlannedBenchmark,
    verdicts: list[Verdict],
    cancel: threading.Event | None,
    pool: WorkerPool | None,
) -> tuple[list[Verdict], Verdict | None]:
    """The best accepted candidate that is also not slower at the model's other batch sizes, and
    the verdicts with what those checks found (a candidate slower elsewhere is refused).

    A variant serves every batch size; int8 kernels that win at 32 can lose at 1.
    """
    others = [p for p in series if p is not primary]
    verdicts = list(verdicts)
    remaining = [v for v in verdicts if v.accepted]
    while (choice := best(remaining)) is not None:
        checks = [_check_at(loaded, planned, choice, cancel, pool) for planned in others]
        at = next(i for i, v in enumerate(verdicts) if v is choice)
        remaining.remove(choice)
        details = {**choice.numbers.details, "other_batch_sizes": checks}
        checked = replace(choice, numbers=replace(choice.numbers, details=details))
        # Slower means measurably slower: the whole interval above 1 (or, with too few rounds for one,
        # the ratio itself); a tie at another batch size does not cost the gain where it was measured.
        slower = [
            c
            for c in checks
            if c["ratio_p50"] is None or (c["ratio_ci95"][0] > 1.0 if c["ratio_ci95"] else c["ratio_p50"] > 1.0)
        ]
        if not slower:
            verdicts[at] = checked
            return verdicts, checked
        why = "slower or unmeasured at batch size " + ", ".join(str(c["batch_size"]) for c in slower)
        verdicts[at] = replace(checked, accepted=False, reasons=[*checked.reasons, why])
    return verdicts, None


def _check_at(
    loaded: LoadedConfig, planned: PlannedBenchmark, choice: Verdict, cancel: threading.Event | None,
    pool: WorkerPool | None,
) -> dict[str, Any]:
    """An A/B of the chosen candidate against the current variant at another batch size."""
    current = replace(planned.job.subjects[0], label=CURRENT_LABEL)
    assert choice.numbers.variant is not None
    candidate = replace(current, label=choice.numbers.label, variant=VariantSpec.from_dict(choice.numbers.variant))
    compiles = catalog.recipe(choice.numbers.recipe).compiles
    outcome = run_with_limits(
        loaded, planned, planned.job.as_job(CompareJob, subjects=[current, candidate]), 2, cancel, pool,
        extra_s=COMPILE_ALLOWANCE_S if compiles else 0.0,
    )
    compared: dict[str, Any] = {}
    if outcome.status == "ok" and outcome.result is not None:
        compared = (outcome.result.comparison or {}).get(choice.numbers.label) or {}
    ratio, interval = compared.get("ratio_p50"), compared.get("ratio_ci95")
    return {
        "batch_size": planned.job.batch_size,
        "ratio_p50": ratio,
        "ratio_ci95": interval,
        "error": None if ratio is not None else (outcome.error or "no interleaved rounds").splitlines()[0],
    }


def _quality(n: CandidateNumbers) -> str:
    if n.accuracy is not None and n.current_accuracy is not None:
        return f"accuracy {n.current_accuracy:.4f} -> {n.accuracy:.4f}"
    if n.fidelity and n.fidelity["kind"] == "top1":
        return f"top-1 agreement {n.fidelity['agreement']:.4f}"
    if n.fidelity:
        return f"output relative error {n.fidelity['value']:.4f}"
    return "quality not measured"


def _remove_unkept(folder: Path, kept: Verdict | None) -> None:
    """Delete the candidates' files except the promoted one's."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if kept is None or child.name != kept.numbers.label:
            shutil.rmtree(child, ignore_errors=True)
    if not any(folder.iterdir()):
        folder.rmdir()
