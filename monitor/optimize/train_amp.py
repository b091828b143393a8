"""Autocast for the training step: time the step as configured against the same step under bf16/fp16
autocast, and say whether switching is worth it.

Each candidate steps its own copy of the model, interleaved with the configured step in one worker
(harness/worker.py `run_train_compare`), so host drift cancels in the ratio. It is kept only if it
is faster by `optimize.min_speedup` with a 95 % interval below 1, and if, from the same weights on the
same batch, its loss after a few steps stays within `optimize.relative_error_tolerance` of the
configured step's: autocast that is fast but trains differently is no win. The verdict is advice:
the training code is the team's, and `train.amp` in the config is how they take it. It is stored as
an action of kind "amp" (`record_advice`): "advised" when a candidate is worth switching to, else
"rejected", with each candidate's numbers, so that `perfguard actions`, the model's report page and
its alert email show it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from monitor.config import LoadedConfig
from monitor.core.actions import ActionRecord, CandidateNumbers, Verdict
from monitor.core.workloads import Amp, amp_modes
from monitor.harness.cpu_info import cpu_flags
from monitor.harness.protocol import TrainCompareJob
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.decision import speed_shortfall
from monitor.registry import UnknownModelError, plan, run_with_limits
from storage import actions, queries
from storage.db import Database

CURRENT = "current"


class TrainCompareError(ValueError):
    """The comparison cannot start: the model has no training step, or the worker failed."""


@dataclass(frozen=True, slots=True)
class StepVerdict:
    """One autocast candidate of the training step, with its numbers and why it is not worth it."""

    label: str
    amp: str | None
    step_ms: float | None
    current_step_ms: float | None
    ratio_p50: float | None  # candidate / configured step, per interleaved round
    ratio_ci95: tuple[float, float] | None
    losses: list[float] = field(default_factory=list)
    current_losses: list[float] = field(default_factory=list)
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def loss_rel_diff(self) -> float | None:
        if not self.losses or not self.current_losses or not self.current_losses[-1]:
            return None
        return abs(self.losses[-1] - self.current_losses[-1]) / abs(self.current_losses[-1])


def compare_training(
    loaded: LoadedConfig, model: str, amps: list[Amp] | None = None, cancel: threading.Event | None = None,
    pool: WorkerPool | None = None,
) -> list[StepVerdict]:
    """Time `model`'s training step against its autocast candidates (`amps`, default: those its device
    suits) at its first training batch size; one verdict per candidate (none when none suits)."""
    try:
        planned = next((p for p in plan(loaded, [model]) if p.job.train_step is not None), None)
    except UnknownModelError as exc:
        raise TrainCompareError(str(exc)) from None
    if planned is None or planned.job.train_step is None:
        raise TrainCompareError(f"model {model!r} has no training step to compare: give it a train table, "
                                'e.g. train = { loss = "cross_entropy", optimizer = "sgd", lr = 0.01 }')
    spec = planned.job.train_step
    # The comparison runs on this host (a local worker), so this CPU's flags say what suits it.
    chosen = amps if amps else amp_modes(planned.job.device, cpu_flags())
    if not chosen:
        return []
    candidates = [replace(spec, amp=amp) for amp in chosen]
    job = planned.job.as_job(TrainCompareJob, train_step=spec, candidates=candidates)
    outcome = run_with_limits(loaded, planned, job, 1 + len(candidates), cancel, pool)
    if outcome.status != "ok" or outcome.result is None:
        raise TrainCompareError(f"the comparison failed: {(outcome.error or outcome.status).strip().splitlines()[0]}")
    settings = loaded.config.optimize.for_model(planned.model.optimize)
    subjects = {s.label: s for s in outcome.result.subjects}
    current = subjects.pop(CURRENT)
    comparison = outcome.result.comparison or {}
    return [
        judge_step(StepVerdict(
            label=label, amp=s.details.get("amp"), step_ms=s.metrics.latency_ms_p50,
            current_step_ms=current.metrics.latency_ms_p50, ratio_p50=comparison.get(label, {}).get("ratio_p50"),
            ratio_ci95=_interval(comparison.get(label, {}).get("ratio_ci95")), losses=s.details.get("losses", []),
            current_losses=current.details.get("losses", []),
        ), settings.min_speedup, settings.relative_error_tolerance)
        for label, s in subjects.items()
    ]


def record_advice(db: Database, loaded: LoadedConfig, model: str, verdicts: list[StepVerdict]) -> ActionRecord:
    """Store the comparison as an action of kind "amp" on the baseline (the model as the team trains
    it): "advised" with the fastest candidate that passed, else "rejected" with every reason."""
    config = loaded.config.model(model)
    with db.session() as session:
        queries.register_model(session, config.name, config.factory, config.device)
    best = min((v for v in verdicts if v.accepted), key=lambda v: v.ratio_p50 or 1.0, default=None)
    if best is not None:
        status, reason = "advised", (f"{best.label}: the training step {1 / (best.ratio_p50 or 1.0):.2f}x faster "
                                     f"(p50 {best.current_step_ms:.4g} -> {best.step_ms:.4g} ms), its loss after "
                                     f"{len(best.losses)} steps {100 * (best.loss_rel_diff or 0.0):.2g} % apart: "
                                     f"set train.amp = \"{best.amp}\"")
    else:
        status = "rejected"
        reason = "; ".join(f"{v.label}: {', '.join(v.reasons)}" for v in verdicts) or (
            f"no autocast mode suits {config.device} here (a CPU without native bf16 emulates it): nothing was "
            "timed; --amp bf16 times it anyway")
    record = ActionRecord(model=model, kind="amp", trigger="cli", status=status, reason=reason,
                          from_variant=queries.BASELINE, candidates=[_as_candidate(v) for v in verdicts])
    return actions.record_action(db, record)


def _as_candidate(verdict: StepVerdict) -> Verdict:
    """A step verdict in the form every action's candidates take; the losses ride in `details`."""
    numbers = CandidateNumbers(
        label=verdict.label, recipe=verdict.label, ratio_p50=verdict.ratio_p50, ratio_ci95=verdict.ratio_ci95,
        p50_ms=verdict.step_ms, current_p50_ms=verdict.current_step_ms,
        details={"mode": "train", "amp": verdict.amp, "losses": verdict.losses,
                 "current_losses": verdict.current_losses, "loss_rel_diff": verdict.loss_rel_diff},
    )
    return Verdict(numbers, verdict.accepted, list(verdict.reasons))


def judge_step(verdict: StepVerdict, min_speedup: float, tolerance: float) -> StepVerdict:
    """The verdict with `accepted` and its reasons: faster by `min_speedup`, significantly, and
    training the same way (the last loss within `tolerance`, relative, and finite)."""
    slower = speed_shortfall(verdict.ratio_p50, verdict.ratio_ci95, min_speedup, "step time")
    reasons = [slower] if slower else []
    diff = verdict.loss_rel_diff
    if any(not math.isfinite(v) for v in verdict.losses):
        reasons.append("the loss became NaN or infinite")
    elif diff is None:
        reasons.append("no losses to compare")
    elif diff > tolerance:
        reasons.append(f"loss after {len(verdict.losses)} steps {verdict.losses[-1]:.4g} vs "
                       f"{verdict.current_losses[-1]:.4g}: {diff:.3f} apart, over the tolerance {tolerance:g}")
    return replace(verdict, accepted=not reasons, reasons=reasons)


def _interval(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))
