"""Detection over stored history: every series of a model, every watched metric, findings kept.

Flow per model: read its runs (newest `history` per series) -> note environment changes between
consecutive runs -> per series, drop failed runs (a failure is not a zero) and, by default, runs
measured on a busy host -> the readings of each metric (readings.py: against the frozen reference
where the runs were timed against one, else as measured) -> `detect_changes` -> each change point
still in effect becomes a finding (before/after medians with intervals, the run where it began, any
environment change at that run, the cause its reading implies) or, when it is the host's, a host
event -> the newest change of an absolute latency is confirmed with raw samples -> findings are
merged into the stored ones. Then each host's speed probe is checked for host events (host.py).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from monitor.config import LoadedConfig, ModelConfig
from monitor.core.hosts import HostEventRecord
from monitor.core.metrics import WATCHED, verdict
from monitor.core.series import (
    Drift,
    FindingRecord,
    Level,
    ReferenceInfo,
    SampleCheck,
    SeriesKey,
    SeriesRun,
    SeriesState,
)
from monitor.detection.changepoints import (
    DetectionOptions,
    detect_changes,
    in_effect,
    step_at,
)
from monitor.detection.confirm import confirm_with_samples, confirms
from monitor.detection.drift import DriftPoint, fold_drift
from monitor.detection.host import check_hosts
from monitor.detection.points import ChangePoint
from monitor.detection.readings import HOST, Reading, series_readings
from monitor.detection.series import SeriesView, figures, level, read_series
from storage import findings as store
from storage import host_events as host_store
from storage.db import Database
from storage.queries import list_models, load_samples

log = logging.getLogger(__name__)

# Fields of the environment fingerprint whose change can explain a change of the numbers.
ENV_FIELDS = ("torch", "python", "cpu", "cpu_count", "gpu", "gpu_driver", "cuda", "threads", "interop_threads", "host",
              "math_env", "cpu_capability")
# Fields runs stored by earlier versions lack: their first appearance is no change.
LATER_ENV_FIELDS = ("math_env", "cpu_capability")
BEFORE_RUNS = 50  # at most this many runs before a change make its "before" level
NOW_RUNS = 5  # a drift finding's "after" level: where the newest runs stand


@dataclass(slots=True)
class CheckResult:
    """What one check found: the models' findings as stored, and which of them are new."""

    findings: list[FindingRecord] = field(default_factory=list)
    new: list[FindingRecord] = field(default_factory=list)
    env_changes: int = 0
    hosts: set[str] = field(default_factory=set)  # where the checked runs were measured
    host_events: list[HostEventRecord] = field(default_factory=list)  # those hosts' open events


def check_models(db: Database, loaded: LoadedConfig, names: Sequence[str] | None = None) -> CheckResult:
    """Run detection for the named models (default: every configured or stored model)."""
    configured = {m.name: m for m in loaded.config.models}
    stored = [] if names else [m.name for m in list_models(db) if m.name not in configured]
    models = list(names) if names else list(configured) + stored
    result = CheckResult()
    for name in models:
        one = check_model(db, loaded, name, configured.get(name))
        result.findings.extend(one.findings)
        result.new.extend(one.new)
        result.env_changes += one.env_changes
        result.hosts |= one.hosts
    result.host_events = check_hosts(db, loaded, sorted(result.hosts))
    return result


def check_model(db: Database, loaded: LoadedConfig, model: str, config: ModelConfig | None) -> CheckResult:
    """Detection over one model's stored history; findings are stored and returned.

    Each series is read as `readings.series_readings` says: a change in a relative reading carries
    its cause from the reading itself; one that is the host's becomes a host event instead.
    """
    views = read_series(db, loaded, model)
    if not views:
        return CheckResult()
    detected: list[FindingRecord] = []
    checked: dict[tuple[SeriesKey, str, str], SeriesState] = {}
    order: dict[int, int] = {}
    host_signals: dict[str, HostSignal] = {}
    env_count = 0
    for view in views:
        key = view.key
        changes = environment_changes(view.runs)
        store.record_env_changes(db, model, changes)
        env_count += len(changes)
        env_at = {run_id: diff for run_id, _, diff in changes}
        # Every successful run has a place: relative readings also read runs on a busy host.
        order.update({r.run_id: i for i, r in enumerate(r for r in view.current if r.status == "ok")})
        reference = store.latest_reference(db, model, key)
        for reading in series_readings(view, reference):
            values, metric = reading.values, reading.metric
            if not np.isfinite(values).any():
                continue
            options = detection_options(loaded, config, metric, reading.name)
            points, drift = detect_changes(values, options=options), None
            if reading.name == "reference":  # environment changes are known points: test each one
                points = _with_env_steps(points, values, reading.runs, [at for _, at, _ in changes], options)
            else:  # a creep is one drift finding, not a staircase of steps
                points, drift = fold_drift(values, points, options)
            newest = values[points[-1].index :] if points else values
            state = SeriesState(float(np.median(newest[np.isfinite(newest)])), options.min_effect)
            checked[key, metric, reading.name] = state
            signal = f"{model} {key.label()} reference"
            if reading.name == "reference":
                host_signals[signal] = HostSignal(str(reading.runs[-1].env.get("host") or "unknown"), state)
            found, events = _changes(db, model, view, reading, points, options, env_at, reference)
            detected += found
            if drift is not None and reading.counts(drift.index):
                detected.append(_drift_finding(model, key, reading, drift, reference))
            if events:
                host_signals[signal].events += events
    known = {f.id for f in store.findings(db, model)}
    stored = store.sync_findings(db, model, detected, checked, order)
    for signal, seen in host_signals.items():  # also when nothing was seen: an event that is over resolves
        host_store.sync_host_events(db, seen.host, {signal: seen.state}, seen.events)
    new = [f for f in stored if f.id not in known]
    for finding in new:
        log.info("finding: %s %s %s %+.1f%% (%s, %s reading, cause %s) from run %d", model, finding.key.label(),
                 finding.metric, 100 * finding.rel_change, finding.verdict, finding.reading, finding.cause or "-",
                 finding.change_run_id)
    hosts = {str(r.env["host"]) for view in views for r in view.runs[-1:] if r.env.get("host")}
    return CheckResult(findings=stored, new=new, env_changes=env_count, hosts=hosts)


def _changes(
    db: Database, model: str, view: SeriesView, reading: Reading, points: list[ChangePoint],
    options: DetectionOptions, env_at: dict[int, dict[str, Any]], reference: ReferenceInfo | None,
) -> tuple[list[FindingRecord], list[HostEventRecord]]:
    """The change points of one reading that are in effect, as findings (each with its cause), or as
    events of the host when the reading says the host changed."""
    values, metric, key = reading.values, reading.metric, view.key
    found: list[FindingRecord] = []
    events: list[HostEventRecord] = []
    for i, change in enumerate(points):
        if not in_effect(change, points, values, options) or not reading.counts(change.index):
            continue
        quantile = WATCHED[metric].sample_quantile
        if reading.name == "absolute" and quantile is not None and change is points[-1]:
            change = _confirm(db, view.usable, values, change, points[:-1], quantile)
        start = points[i - 1].index if i else 0
        stop = points[i + 1].index if i + 1 < len(points) else len(values)
        env_diff = _env_diff(view.current, reading.runs, change.index, env_at)
        cause = reading.cause(env_diff, reference)
        segment = (max(start, change.index - BEFORE_RUNS), change.index, stop)
        if cause == HOST:  # the host's: a host event when it slowed down (speeding up ends one)
            if change.direction == "up":
                events.append(_host_event(f"{model} {key.label()} reference", reading, change, segment))
            continue
        finding = _finding(model, key, metric, reading, (start, stop), change, env_diff)
        levels = _levels(reading, segment, reference) if reading.name != "absolute" else None
        found.append(replace(finding, cause=cause, confirmation=levels))
    return found, events


def _with_env_steps(
    points: list[ChangePoint], values: np.ndarray, runs: Sequence[SeriesRun], env_changed: Sequence[datetime],
    options: DetectionOptions,
) -> list[ChangePoint]:
    """`points` and the steps found by a test at each environment change where the scan put none
    (see `step_at`), each up to the next environment change, in order. A change recorded at a run
    this reading skips (a failed or contended one) is tested at the next run it reads."""
    starts = [r.started_at for r in runs]
    changes = sorted({bisect.bisect_left(starts, at) for at in env_changed} - {0, len(runs)})
    found = list(points)
    for n, index in enumerate(changes):
        if any(p.index == index for p in points):
            continue
        stop = changes[n + 1] if n + 1 < len(changes) else len(values)
        step = step_at(values, index, stop, options)
        if step is not None:
            found.append(step)
    return sorted(found, key=lambda p: p.index)


@dataclass(slots=True)
class HostSignal:
    """A model's frozen reference as a host signal: its changes that no environment change explains
    are the host's (host events), and where it stands now resolves them once they are over."""

    host: str
    state: SeriesState
    events: list[HostEventRecord] = field(default_factory=list)


def _host_event(signal: str, reading: Reading, change: ChangePoint, segment: tuple[int, int, int]) -> HostEventRecord:
    run = reading.runs[change.index]
    first, at, stop = segment
    return HostEventRecord(
        host=str(run.env.get("host") or "unknown"), signal=signal, change=change.direction,
        change_run_id=run.run_id, change_at=run.started_at, before=level(reading.values[first:at]),
        after=level(reading.values[at:stop]), rel_change=change.rel_change, p_value=change.p_value,
    )


def _levels(reading: Reading, segment: tuple[int, int, int], reference: ReferenceInfo | None) -> dict[str, Any]:
    """Both levels of a non-absolute finding: what the reading compared, and the absolute p50 it
    corrects, before and after the change (medians over the same runs)."""
    first, at, stop = segment
    figures_of = {"relative": ("rel_to_reference", "ratio"), "reference": ("reference_p50_ms", "reference_ms"),
                  "normalised": ("probe_blas_ms", "probe_blas_ms")}
    field_name, label = figures_of[reading.name]
    levels: dict[str, Any] = {"reading": reading.name, "reference_id": reference.id if reference else None}
    for name, metric in ((label, field_name), ("absolute_p50_ms", "latency_ms_p50")):
        values = figures(reading.runs, metric)
        levels[f"{name}_before"] = _median(values[first:at])
        levels[f"{name}_after"] = _median(values[at:stop])
    if reading.name == "reference":
        probe = figures(reading.runs, "probe_blas_ms")
        levels["probe_blas_ms_before"] = _median(probe[first:at])
        levels["probe_blas_ms_after"] = _median(probe[at:stop])
    return levels


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _env_diff(
    series: Sequence[SeriesRun], usable: Sequence[SeriesRun], index: int, env_at: dict[int, dict[str, Any]]
) -> dict[str, Any] | None:
    """The environment changes of a series between the last run read before a change and its first.

    Runs not read in between (failed, contended, another reading's) count too: the environment may
    have changed at one of them.
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


def detection_options(
    loaded: LoadedConfig, config: ModelConfig | None, metric: str, reading: str = "absolute"
) -> DetectionOptions:
    """The options for one metric: its default effect (smaller for the relative reading, which drift
    cannot move), the config's, then the model's override."""
    settings = loaded.config.detection
    default = WATCHED[metric].min_effect
    relative = WATCHED[metric].relative_min_effect
    if reading == "relative" and relative is not None:
        default = relative
    effect = settings.min_effect.get(metric, default)
    alpha = settings.alpha
    if config is not None:
        effect = config.detection.min_effect.get(metric, effect)
        alpha = config.detection.alpha if config.detection.alpha is not None else alpha
    return DetectionOptions(min_effect=effect, alpha=alpha)


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
            diff = _diff(previous, env)
            if diff:
                changes.append((run.run_id, run.started_at, diff))
        previous = env
    return changes


def _diff(previous: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """field -> [before, after] for each changed field; a dict field (math_env) per key, named
    "math_env.MKL_CBWR", so that the diff says which variable changed."""
    diff: dict[str, Any] = {}
    for name in ENV_FIELDS:
        old, new = previous[name], env[name]
        if old == new or (name in LATER_ENV_FIELDS and old is None):
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed = (k for k in sorted({*old, *new}) if old.get(k) != new.get(k))
            diff.update({f"{name}.{k}": [old.get(k), new.get(k)] for k in changed})
        else:
            diff[name] = [old, new]
    return diff


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


def _drift_finding(
    model: str, key: SeriesKey, reading: Reading, drift: DriftPoint, reference: ReferenceInfo | None
) -> FindingRecord:
    """A drift as a finding: the level before it began against where it stands now (its newest
    runs), how far it has gone and how fast."""
    values, runs, start = reading.values, reading.runs, drift.index
    begun = runs[start]
    earlier = values[max(0, start - BEFORE_RUNS) : start]
    if np.isfinite(earlier).sum() >= 3:
        before = level(earlier)
    else:  # it began with the series' stretch: its fitted start is the level before
        before = Level(median=drift.level, low=drift.level, high=drift.level, runs=0)
    days = (runs[-1].started_at - begun.started_at).total_seconds() / 86400.0
    shape = Drift(slope_per_run=drift.rel_slope, slope_per_day=drift.rel_change / days if days > 0 else None,
                  runs=drift.points)
    return FindingRecord(
        model=model, key=key, metric=reading.metric, change=drift.direction,
        verdict=verdict(reading.metric, drift.direction), change_run_id=begun.run_id, change_at=begun.started_at,
        before=before, after=level(values[-NOW_RUNS:]), rel_change=drift.rel_change, p_value=drift.p_value,
        cause=reading.cause(None, reference), reading=reading.name, kind="drift", drift=shape,
    )


def _finding(
    model: str,
    key: SeriesKey,
    metric: str,
    reading: Reading,
    segment: tuple[int, int],
    change: ChangePoint,
    env_diff: dict[str, Any] | None,
) -> FindingRecord:
    """A change point as a finding: the level before it (since the previous change, at most the last
    BEFORE_RUNS runs) against the level after it (up to the next change, or now)."""
    start = change.index
    values = reading.values
    run = reading.runs[start]
    before = level(values[max(segment[0], start - BEFORE_RUNS) : start])
    after = level(values[start : segment[1]])
    samples = None
    if change.samples_interval is not None:
        low, high = change.samples_interval
        samples = SampleCheck(interval=(low, high), p_value=change.samples_p_value, confirmed=confirms(change))
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
        reading=reading.name,
    )
