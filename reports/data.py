"""What a report shows, read from storage into typed values: per model its series, status, findings,
actions and environment changes; for the fleet, every model at a glance.

Reports read storage only. The caller says which models to report and what the config knows of them
(owners, SLOs) as `ReportedModel`s, so this package never needs the config or the harness.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from monitor.core.actions import ActionRecord
from monitor.core.hosts import HostEventRecord
from monitor.core.series import SERIES_MODES, FindingRecord, SeriesKey
from storage import findings as findings_store
from storage import host_events as host_store
from storage import queries
from storage.actions import actions
from storage.db import Database
from storage.rule_events import RuleEvent, events
from storage.trends import INDEX, TrendRun, recent_runs

Status = Literal["failing", "regressed", "slo", "watch", "ok", "new"]
# Worst first: a model's status is the worst that holds, and the overview sorts by it.
STATUS_ORDER: tuple[Status, ...] = ("failing", "regressed", "slo", "watch", "ok", "new")
BASELINE_RUNS = 10  # the baseline level is the median of a series' first runs since its baseline
WATCH_CHANGE = 0.05  # p50 this much above its baseline, with no finding yet, is worth a look
RUN_TABLE_ROWS = 50
HIGHER_IS_BETTER = frozenset({"throughput_per_s", "accuracy"})  # their SLOs are lower bounds
# Which finding leads a model's status line: what users feel first.
LEAD_METRICS = ("latency_ms_p50", "latency_ms_p99", "throughput_per_s", "accuracy", "peak_rss_mb",
                "cuda_peak_mem_mb", "energy_j_per_inference", "model_size_mb")
FINDINGS_SHOWN = 30
ACTIONS_SHOWN = 20
HOST_EVENTS_SHOWN = 10  # host events that are over, newest first


@dataclass(frozen=True, slots=True)
class ReportedModel:
    """A model to report, with what the config says of it."""

    name: str
    owners: tuple[str, ...] = ()
    slo: Mapping[str, float] = field(default_factory=dict)
    device: str = "cpu"
    factory: str | None = None
    configured: bool = True  # False: only in the database (runs from an older config or another host)


@dataclass(frozen=True, slots=True)
class SeriesView:
    """One series of a model: its runs in the window, its baseline level and where it stands now."""

    key: SeriesKey
    runs: list[TrendRun]  # oldest first
    baseline: dict[str, float | None]  # latency_ms_p50 / latency_ms_p99: median of the first runs
    latest: TrendRun | None  # newest usable run (successful, not on a busy host: what the rules read)
    last: TrendRun | None  # newest run of any status
    active: bool  # of the model's active variant

    def change(self, metric: str) -> float | None:
        """Relative change of `metric` from the baseline level to the newest successful run."""
        before = self.baseline.get(metric)
        now = self.latest.figure(metric) if self.latest else None
        return now / before - 1.0 if now is not None and before else None

    def values(self, metric: str) -> list[float | None]:
        """One figure per run, None (a gap) where the run failed or ran on a busy host."""
        i = INDEX[metric]
        return [run.values[i] if run.usable else None for run in self.runs]


@dataclass(frozen=True, slots=True)
class ModelView:
    """Everything the model's page shows."""

    model: ReportedModel
    status: Status
    status_reason: str
    active_variant: str
    series: list[SeriesView]  # active variant first, then by batch size
    open_findings: list[FindingRecord]
    past_findings: list[FindingRecord]
    actions: list[ActionRecord]
    alerts: list[RuleEvent]
    env_changes: list[tuple[int, datetime, dict[str, Any]]]
    recent_runs: list[TrendRun]  # newest first, for the run table

    @property
    def primary(self) -> SeriesView | None:
        """The series the overview shows: the active variant's smallest batch (the serving latency)."""
        return self.series[0] if self.series else None

    @property
    def runs_shown(self) -> int:
        return sum(len(s.runs) for s in self.series)

    @property
    def failed_runs(self) -> int:
        return sum(run.status != "ok" for s in self.series for run in s.runs)


@dataclass(frozen=True, slots=True)
class FleetReport:
    """The whole report: when, from which database, every model, and the hosts' events."""

    generated_at: datetime
    database: str
    models: list[ModelView]
    host_events: list[HostEventRecord] = field(default_factory=list)  # open first, then recent ones

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUS_ORDER, 0)
        for view in self.models:
            counts[view.status] += 1
        return counts

    def only(self, names: Sequence[str]) -> FleetReport:
        """The same report narrowed to some models (an owner's digest)."""
        wanted = set(names)
        return FleetReport(self.generated_at, self.database, [m for m in self.models if m.model.name in wanted],
                           self.host_events)


def gather(
    db: Database, models: Sequence[ReportedModel], *, per_series: int = 1000, now: datetime | None = None
) -> FleetReport:
    """Read what the report shows of `models` (in the given order, worst status first)."""
    names = [m.name for m in models]
    runs = recent_runs(db, names, per_series)
    active = {info.name: info.active_variant for info in queries.list_models(db)}
    # Everything else of the fleet in a few queries, grouped here (not four queries per model).
    context = _Context(
        findings=_by_model(findings_store.findings(db, models=names)),
        actions=_by_model(actions(db, models=names, per_model=ACTIONS_SHOWN)),
        alerts=_by_model(events(db, outcome="alert", models=names, per_model=FINDINGS_SHOWN)),
        baselines=findings_store.baselines_by_model(db, names),
        env_changes=findings_store.env_changes_by_model(db, names),
    )
    views = [_model_view(model, runs.get(model.name, []), active.get(model.name, queries.BASELINE), context)
             for model in models]
    return fleet(views, db.display_location(), recent_host_events(db), now)


def fleet(
    views: Sequence[ModelView], database: str, host_events: Sequence[HostEventRecord] = (),
    now: datetime | None = None,
) -> FleetReport:
    """A report of these model views, worst status first (also for views kept from earlier reads)."""
    order = {status: i for i, status in enumerate(STATUS_ORDER)}
    ordered = sorted(views, key=lambda v: (order[v.status], v.model.name))
    return FleetReport(now or datetime.now(UTC), database, ordered, list(host_events))


def recent_host_events(db: Database) -> list[HostEventRecord]:
    """Every open host event, then the newest ones that are over."""
    stored = host_store.host_events(db)
    return [e for e in stored if e.state == "open"] + [e for e in stored if e.state != "open"][:HOST_EVENTS_SHOWN]


@dataclass(frozen=True, slots=True)
class _Context:
    """What gather reads for the whole fleet at once, by model."""

    findings: dict[str, list[FindingRecord]]
    actions: dict[str, list[ActionRecord]]
    alerts: dict[str, list[RuleEvent]]
    baselines: dict[str, dict[SeriesKey, datetime]]
    env_changes: dict[str, list[tuple[int, datetime, dict[str, Any]]]]


def _by_model(records: Sequence[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        grouped[record.model].append(record)
    return grouped


def _model_view(model: ReportedModel, runs: list[TrendRun], active_variant: str, context: _Context) -> ModelView:
    by_key: dict[SeriesKey, list[TrendRun]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    since = context.baselines.get(model.name, {})
    series = [
        # A training step trains what the factory builds, whichever variant is served.
        _series_view(key, key_runs, since.get(key), key.variant == active_variant or key.mode == "train")
        for key, key_runs in by_key.items()
    ]
    series.sort(key=lambda s: (not s.active, SERIES_MODES.index(s.key.mode), s.key.variant, s.key.device,
                               s.key.batch_size, s.key.concurrency))
    findings = context.findings.get(model.name, [])
    open_findings = sorted((f for f in findings if f.state == "open"), key=lead_first)
    past = [f for f in findings if f.state != "open"][:FINDINGS_SHOWN]
    status, reason = _status(model, series, open_findings)
    recent = sorted(runs, key=lambda r: (r.started_at, r.run_id), reverse=True)[:RUN_TABLE_ROWS]
    return ModelView(
        model=model, status=status, status_reason=reason, active_variant=active_variant, series=series,
        open_findings=open_findings, past_findings=past,
        actions=context.actions.get(model.name, []),
        alerts=context.alerts.get(model.name, []),
        env_changes=context.env_changes.get(model.name, []), recent_runs=recent,
    )


def lead_first(finding: FindingRecord) -> tuple[int, int, int]:
    """Sort key of findings: regressions first, then by what users feel first (LEAD_METRICS)."""
    rank = LEAD_METRICS.index(finding.metric) if finding.metric in LEAD_METRICS else len(LEAD_METRICS)
    return (finding.verdict != "regression", rank, finding.key.batch_size)


def _series_view(key: SeriesKey, runs: list[TrendRun], since: datetime | None, active: bool) -> SeriesView:
    ok = [r for r in runs if r.usable]
    start = [r for r in ok if since is None or r.started_at >= since] or ok
    baseline: dict[str, float | None] = {}
    for metric in ("latency_ms_p50", "latency_ms_p99", "throughput_per_s", "peak_rss_mb"):
        values = [v for r in start[:BASELINE_RUNS] if (v := r.figure(metric)) is not None]
        baseline[metric] = statistics.median(values) if values else None
    return SeriesView(key, runs, baseline, ok[-1] if ok else None, runs[-1] if runs else None, active)


def _status(model: ReportedModel, series: list[SeriesView], open_findings: list[FindingRecord]) -> tuple[Status, str]:
    active = [s for s in series if s.active] or series
    if not active:
        return "new", "no runs yet"
    failing = [s for s in active if s.last is not None and s.last.status != "ok"]
    if failing:
        last = failing[0].last
        assert last is not None
        error = (last.error or "").strip().splitlines()
        why = error[-1] if error else "no error text"
        return "failing", f"last run of {last.key.label()} {last.status}: {why}"[:300]
    regressions = [f for f in open_findings if f.verdict == "regression"]
    if regressions:
        f = regressions[0]
        more = f" and {len(regressions) - 1} more" if len(regressions) > 1 else ""
        return "regressed", f"{f.metric} {100 * f.rel_change:+.1f} % on {f.key.label()}{more}"
    for s in active:
        if not s.key.is_inference:
            continue  # SLOs promise callers one request's figures, not a training step's
        for metric, limit in model.slo.items():
            value = s.latest.figure(metric) if s.latest and metric in INDEX else None
            if value is None:
                continue
            if metric in HIGHER_IS_BETTER and value < limit:
                return "slo", f"{metric} {value:.4g} under its SLO {limit:g} on {s.key.label()}"
            if metric not in HIGHER_IS_BETTER and value > limit:
                return "slo", f"{metric} {value:.4g} over its SLO {limit:g} on {s.key.label()}"
    for s in active:
        change = s.change("latency_ms_p50")
        if change is not None and change >= WATCH_CHANGE:
            return "watch", f"p50 {100 * change:+.1f} % from its baseline on {s.key.label()}, no finding yet"
    return "ok", "within its baseline"
