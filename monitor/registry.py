"""Registered models as the rest of the code sees them: the config's models turned into benchmark jobs.

A model with `batch_sizes` gives one job (one stored series) per batch size; each size replaces the
first dimension of every example input. A model with a `train` table adds a training-step series per
batch size (of the model its factory builds: that is what trains), and one with `load` a series per
concurrency level (of the variant it serves). Factory paths resolve in the worker, against the config's
folder first, so a module beside the config (`my_model:build` for examples/my_model.py) needs no install.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from monitor.config import HarnessConfig, LoadedConfig, ModelConfig
from monitor.core.series import ReferenceInfo, SeriesKey
from monitor.harness.protocol import (
    REFERENCE_LABEL,
    ArtifactRef,
    BenchmarkJob,
    InputTensor,
    SamplingSettings,
    Subject,
    VariantSpec,
    WorkerJob,
)
from monitor.harness.runner import ProgressCallback, WorkerOutcome, run_worker
from monitor.harness.worker_pool import WorkerPool
from storage import actions, findings, queries
from storage.db import Database


@dataclass(frozen=True, slots=True)
class PlannedBenchmark:
    """One series to measure now: a model at one batch size, with its limits.

    `absolute_why` says why a job times no reference beside the model (no reference frozen yet, the
    reference was lost, relative measurement is off); None when it does.
    """

    model: ModelConfig
    job: BenchmarkJob
    timeout_s: float
    memory_limit_mb: float | None
    absolute_why: str | None = None

    @property
    def key(self) -> SeriesKey:
        """The series its runs are stored in: the variant it builds, its device, batch size and mode."""
        variant = self.job.subjects[0].variant
        return SeriesKey(variant.name if variant else queries.BASELINE, self.job.device, self.job.batch_size,
                         self.job.series_mode, self.job.concurrency)


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return f"unknown model {self.args[0]!r}; registered: {', '.join(self.args[1]) or '(none)'}"


def sampling_settings(model: ModelConfig, harness: HarnessConfig) -> SamplingSettings:
    return SamplingSettings(
        max_time_s=model.max_time_s,
        target_ci_rel=harness.target_ci_rel,
        min_samples=harness.min_samples,
        contention_cpu_pct=harness.contention_cpu_pct,
    )


def active_variant(session: Session, model: str) -> VariantSpec:
    """How to build the variant a model is benchmarked and served as (the baseline: its factory)."""
    name = queries.active_variant(session, model)
    spec = actions.active_spec(session, model)
    return VariantSpec.from_dict({**spec, "name": name}) if spec else VariantSpec(name=name)


def subject_for(
    model: ModelConfig, batch_size: int, label: str = "baseline", variant: VariantSpec | None = None
) -> Subject:
    inputs = None
    if model.inputs is not None:
        inputs = [
            InputTensor(shape=[batch_size, *spec.shape[1:]], dtype=spec.dtype, low=spec.low, high=spec.high)
            for spec in model.inputs
        ]
    return Subject(
        label=label,
        factory=model.factory,
        inputs=inputs,
        inputs_factory=model.inputs_factory,
        eval=model.eval,
        eval_holdout=eval_holdout(model, variant),
        variant=variant,
    )


def eval_holdout(model: ModelConfig, variant: VariantSpec | None) -> float | None:
    """The held-out share of the eval batches the subject's accuracy reads: the share its variant's
    student trained around, when it was distilled from the eval (whatever the config says now: it
    must never be judged on what it learned from), else the config's (`ModelConfig.eval_holdout`)."""
    for step in reversed(variant.steps if variant is not None else []):
        if step.recipe == "distill" and step.params.get("eval"):
            return float(step.params["holdout"])
    return model.eval_holdout


def plan(
    loaded: LoadedConfig,
    names: list[str] | None = None,
    variants: dict[str, VariantSpec] | None = None,
    references: dict[tuple[str, SeriesKey], ReferenceInfo | None] | None = None,
) -> list[PlannedBenchmark]:
    """The benchmarks to run for the named models (all when `names` is empty), in config order.

    `variants` (model -> active variant) makes each job build that variant; a model missing from it
    is benchmarked as its factory builds it (the baseline). `references` ((model, series) -> its
    newest reference) makes each series with a usable one time it beside the model (a relative
    run); without the argument no job does.
    """
    config = loaded.config
    registered = [m.name for m in config.models]
    for name in names or []:
        if name not in registered:
            raise UnknownModelError(name, registered)
    wanted = [m for m in config.models if not names or m.name in names]
    planned = []
    for model in wanted:
        variant = (variants or {}).get(model.name)
        for batch_size in model.series_batch_sizes:
            item = _planned(loaded, model, subject_for(model, batch_size, variant=variant), batch_size)
            if references is not None:
                item = with_reference(item, references.get((model.name, item.key)), config.harness.relative)
            planned.append(item)
        planned += _workload_series(loaded, model, variant)
    return planned


def _workload_series(loaded: LoadedConfig, model: ModelConfig, variant: VariantSpec | None) -> list[PlannedBenchmark]:
    """The model's training-step and concurrent-load series. They time no reference (a frozen copy is
    of one inference call) and no accuracy (a training model's is on the move; load adds nothing)."""
    series = []
    spec = model.train_step
    for batch_size in model.train_batch_sizes:
        subject = replace(subject_for(model, batch_size), eval=None)
        series.append(_planned(loaded, model, subject, batch_size, train_step=spec,
                               absolute_why="a training-step series has no frozen reference"))
    if model.load is not None:
        batch_size = model.load_batch_size
        for level in model.load.levels():
            subject = replace(subject_for(model, batch_size, variant=variant), eval=None)
            series.append(_planned(loaded, model, subject, batch_size, load=level,
                                   extra_s=level.duration_s + level.warmup_s,
                                   absolute_why="a load series has no frozen reference"))
    return series


def _planned(
    loaded: LoadedConfig, model: ModelConfig, subject: Subject, batch_size: int, extra_s: float = 0.0,
    absolute_why: str | None = None, **workload: Any,
) -> PlannedBenchmark:
    job = BenchmarkJob(
        model=model.name,
        subjects=[subject],
        batch_size=batch_size,
        device=model.device,
        threads=model.threads,
        sampling=sampling_settings(model, loaded.config.harness),
        sys_path=[str(loaded.base_dir)],
        probe=loaded.config.harness.probe and "load" not in workload,  # the load driver times no probe
        **workload,
    )
    return PlannedBenchmark(model, job, model.effective_timeout_s + extra_s, model.memory_limit_mb, absolute_why)


def with_reference(planned: PlannedBenchmark, reference: ReferenceInfo | None, relative: bool) -> PlannedBenchmark:
    """The planned run timing `reference` beside its model when the reference is usable; else the
    run as planned, saying why it measures absolutely."""
    if not planned.key.is_inference:
        return planned
    if not relative:
        return replace(planned, absolute_why="relative measurement is off ([harness] relative = false)")
    if reference is None or not reference.artifact:
        return replace(planned, absolute_why="no frozen reference of this series yet")
    if reference.lost_at is not None:
        return replace(planned, absolute_why=f"reference {reference.id} lost: {reference.lost_reason}")
    live = planned.job.subjects[0]
    artifact = ArtifactRef.from_dict(reference.artifact)
    copy = replace(live, label=REFERENCE_LABEL, eval=None, variant=None, artifact=artifact)
    return replace(planned, job=replace(planned.job, reference=copy, reference_id=reference.id))


def series_references(
    db: Database, planned: list[PlannedBenchmark]
) -> dict[tuple[str, SeriesKey], ReferenceInfo | None]:
    """The newest reference of each planned inference series, as `plan` takes them (the others have none)."""
    return {(p.model.name, p.key): findings.latest_reference(db, p.model.name, p.key)
            for p in planned if p.key.is_inference}


def plan_active(db: Database, loaded: LoadedConfig, names: list[str] | None = None) -> list[PlannedBenchmark]:
    """`plan` for each model's active variant as the database records it."""
    wanted = names or [m.name for m in loaded.config.models]
    with db.session(readonly=True) as session:
        variants = {name: active_variant(session, name) for name in wanted}
    return plan(loaded, names, variants)


def inference_series(db: Database, loaded: LoadedConfig, names: list[str] | None = None) -> list[PlannedBenchmark]:
    """`plan_active`'s one-call-at-a-time series: those a frozen reference, an A/B, a profile or an
    optimisation times (training-step and load series have none of these)."""
    return [p for p in plan_active(db, loaded, names) if p.key.is_inference]


def run_with_limits(
    loaded: LoadedConfig,
    planned: PlannedBenchmark,
    job: WorkerJob,
    models: int,
    cancel: threading.Event | None,
    pool: WorkerPool | None,
    extra_s: float = 0.0,
    scale_memory: bool = True,
    progress: ProgressCallback | None = None,
) -> WorkerOutcome:
    """Run another job of a planned series (an A/B, a freeze, candidates, a profile) holding `models`
    models at once: the series' time limit scaled by it (plus `extra_s`), and its memory limit too
    unless `scale_memory` is off."""
    memory = planned.memory_limit_mb
    if memory is not None and scale_memory:
        memory *= models
    return run_worker(
        job,
        timeout_s=planned.timeout_s * models + extra_s,
        memory_limit_mb=memory,
        pin_allocator=loaded.config.harness.pin_allocator,
        cwd=Path(loaded.base_dir),
        cancel=cancel,
        pool=pool,
        progress=progress,
    )
