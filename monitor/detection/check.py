"""Detection over stored history: every series of a model, every watched metric, findings kept.

Flow per model: read its runs (newest `history` per series) -> note environment changes between
consecutive runs -> per series and metric, drop failed runs (a failure is not a zero) and, by default,
runs measured on a busy host -> `detect_changes` -> each change point still in effect becomes a finding
(before/after medians with intervals, the run where it began, any environment change at that run) ->
the newest latency change is confirmed with raw samples -> findings are merged into the stored ones.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.config import LoadedConfig, ModelConfig
from monitor.detection.changepoints import ChangePoint, DetectionOptions, detect_changes
from monitor.detection.confirm import confirm_with_samples, confirms
from monitor.detection.metrics import WATCHED, verdict
from monitor.harness.sampling import median_ci
from storage import findings as store
from storage.db import Database
from storage.findings import FindingRecord, SeriesKey, SeriesRun, SeriesState
from storage.queries import list_models, load_samples
from storage.records import FLAG_CONTENDED

log = logging.getLogger(__name__)

# Fields of the environment fingerprint whose change can explain a change of the numbers.
ENV_FIELDS = ("torch", "python", "cpu", "cpu_count", "gpu", "gpu_driver", "cuda", "threads", "interop_threads", "host")


@dataclass(slots=True)
class CheckResult:
    """What one check found: the models' findings as stored, and which of them are new."""

    findings: list[FindingRecord] = field(default_factory=list)
    new: list[FindingRecord] = field(default_factory=list)
    env_changes: int = 0


def check_models(db: Database, loaded: LoadedConfig, names: Sequence[str] | None = None) -> CheckResult:
    """Run detection for the named models (default: every configured or stored model)."""
    configured = {m.name: m for m in loaded.config.models}
    if names:
        models = list(names)
    else:
        models = list(configured) + [m.name for m in list_models(db) if m.name not in configured]
    result = CheckResult()
    for name in models:
        one = check_model(db, loaded, name, configured.get(name))
        result.findings.extend(one.findings)
        result.new.extend(one.new)
        result.env_changes += one.env_changes
    return result


@dataclass(frozen=True, slots=True)
class SeriesView:
    """One series of a model as detection reads it."""

    key: SeriesKey
    runs: list[SeriesRun]  # every stored run read (all statuses), oldest first
    current: list[SeriesRun]  # those since the accepted baseline, if any
    usable: list[SeriesRun]  # of those, the runs detection reads (see `usable_run`)

    def values(self, metric: str) -> np.ndarray:
        """The usable runs' figures of one metric, NaN where a run has none."""
        return np.array([_value(r.metrics.get(metric)) for r in self.usable], dtype=float)


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


def check_model(db: Database, loaded: LoadedConfig, model: str, config: ModelConfig | None) -> CheckResult:
    """Detection over one model's stored history; findings are stored and returned."""
    views = read_series(db, loaded, model)
    if not views:
        return CheckResult()
    detected: list[FindingRecord] = []
    checked: dict[tuple[SeriesKey, str], SeriesState] = {}
    order: dict[int, int] = {}
    env_count = 0
    for view in views:
        key, usable = view.key, view.usable
        changes = environment_changes(view.runs)
        store.record_env_changes(db, model, changes)
        env_count += len(changes)
        env_at = {run_id: diff for run_id, _, diff in changes}
        order.update({r.run_id: i for i, r in enumerate(usable)})
        for metric in WATCHED:
            values = view.values(metric)
            if not np.isfinite(values).any():
                continue
            options = detection_options(loaded, config, metric)
            points = detect_changes(values, options=options)
            newest = values[points[-1].index :] if points else values
            checked[key, metric] = SeriesState(float(np.median(newest[np.isfinite(newest)])), options.min_effect)
            for i, change in enumerate(points):
                if not in_effect(change, points, values, options):
                    continue
                quantile = WATCHED[metric].sample_quantile
                if quantile is not None and change is points[-1]:
                    change = _confirm(db, usable, values, change, points[:-1], quantile)
                start = points[i - 1].index if i else 0
                stop = points[i + 1].index if i + 1 < len(points) else len(values)
                env_diff = _env_diff(view.current, usable, change.index, env_at)
                detected.append(_finding(model, key, metric, usable, values, (start, stop), change, env_diff))
    known = {f.id for f in store.findings(db, model)}
    stored = store.sync_findings(db, model, detected, checked, order)
    new = [f for f in stored if f.id not in known]
    for finding in new:
        log.info(
            "finding: %s %s %s %+.1f%% (%s) from run %d",
            model, finding.key.label(), finding.metric, 100 * finding.rel_change, finding.verdict, finding.change_run_id,
        )
    return CheckResult(findings=stored, new=new, env_changes=env_count)


def _env_diff(
    series: Sequence[SeriesRun], usable: Sequence[SeriesRun], index: int, env_at: dict[int, dict[str, Any]]
) -> dict[str, Any] | None:
    """The environment changes of a series between the last usable run before a change and its first.

    Failed or contended runs in between count too: the environment may have changed at one of them.
    """
    first = usable[index].run_id
    previous = usable[index - 1].run_id if index > 0 else None
    merged: dict[str, Any] = {}
    inside = previous is None
    for run in series:
        if run.run_id == previous:
            inside = True
            continue
        if inside and run.run_id in env_at:
            for name, (old, new) in env_at[run.run_id].items():
                merged[name] = [merged[name][0] if name in merged else old, new]
        if run.run_id == first:
            break
    return {name: pair for name, pair in merged.items() if pair[0] != pair[1]} or None


def detection_options(loaded: LoadedConfig, config: ModelConfig | None, metric: str) -> DetectionOptions:
    """The options for one metric: its default effect, the config's, then the model's override."""
    settings = loaded.config.detection
    effect = settings.min_effect.get(metric, WATCHED[metric].min_effect)
    alpha = settings.alpha
    if config is not None:
        effect = config.detection.min_effect.get(metric, effect)
        alpha = config.detection.alpha if config.detection.alpha is not None else alpha
    return DetectionOptions(min_effect=effect, alpha=alpha)


def in_effect(
    change: ChangePoint, points: Sequence[ChangePoint], values: np.ndarray, options: DetectionOptions
) -> bool:
    """Whether a change still holds: the newest level differs from the level before the change by
    at least the minimum effect, in the change's direction (a regression later undone does not)."""
    newest = values[points[-1].index :]
    current = float(np.median(newest[np.isfinite(newest)]))
    rel = current / change.before - 1.0 if change.before else 0.0
    return abs(rel) >= options.min_effect and (rel > 0) == (change.direction == "up")


def environment_changes(series: Sequence[SeriesRun]) -> list[tuple[int, Any, dict[str, Any]]]:
    """(run id, time, field -> [before, after]) wherever the environment changed between two runs of
    one series (any status: a failed run still records where it ran)."""
    previous: dict[str, Any] | None = None
    changes = []
    for run in series:
        if not run.env or run.env.get("torch") is None:
            continue  # a worker that died before reporting its environment
        env = {name: run.env.get(name) for name in ENV_FIELDS}
        if previous is not None:
            diff = {name: [previous[name], env[name]] for name in ENV_FIELDS if previous[name] != env[name]}
            if diff:
                changes.append((run.run_id, run.started_at, diff))
        previous = env
    return changes


def usable_run(run: SeriesRun, contended: str) -> bool:
    """A run detection reads: successful and, unless configured otherwise, not on a busy host."""
    if run.status != "ok":
        return False
    return contended == "include" or FLAG_CONTENDED not in run.flags


def _value(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _confirm(
    db: Database,
    runs: Sequence[SeriesRun],
    values: np.ndarray,
    change: ChangePoint,
    earlier: Sequence[ChangePoint],
    quantile: float,
) -> ChangePoint:
    """The newest change of a latency series, checked against the raw samples of nearby runs."""
    samples: list[list[float] | None] = [None] * len(runs)
    for i in range(max(0, change.index - 12), min(len(runs), change.index + 12)):
        samples[i] = load_samples(db, runs[i].run_id) or None
    return confirm_with_samples(change, values, samples, earlier, quantile=quantile)


def _finding(
    model: str,
    key: SeriesKey,
    metric: str,
    runs: Sequence[SeriesRun],
    values: np.ndarray,
    segment: tuple[int, int],
    change: ChangePoint,
    env_diff: dict[str, Any] | None,
) -> FindingRecord:
    """A change point as a finding: the level before it (since the previous change, at most the last
    50 runs) against the level after it (up to the next change, or now)."""
    start = change.index
    run = runs[start]
    before = _segment_summary(values, max(segment[0], start - 50), start)
    after = _segment_summary(values, start, segment[1])
    samples = None
    if change.samples_interval is not None:
        samples = {
            "interval": list(change.samples_interval),
            "p_value": change.samples_p_value,
            "confirmed": confirms(change),
        }
    return FindingRecord(
        model=model,
        key=key,
        metric=metric,
        change=change.direction,
        verdict=verdict(metric, change.direction),
        change_run_id=run.run_id,
        change_at=run.started_at,
        before=before,
        after=after,
        rel_change=change.rel_change,
        p_value=change.p_value,
        samples=samples,
        env_diff=env_diff,
    )


def _segment_summary(values: np.ndarray, start: int, stop: int) -> dict[str, Any]:
    part = values[start:stop]
    part = np.sort(part[np.isfinite(part)])
    low, high = median_ci(part.tolist())
    return {"median": float(np.median(part)), "low": float(low), "high": float(high), "runs": int(part.size)}
