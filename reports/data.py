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

from storage import findings as findings_store
from storage import queries
from storage.actions import ActionRecord, actions
from storage.db import Database
from storage.findings import FindingRecord, SeriesKey
from storage.rule_events import RuleEvent, events
from storage.trends import TrendRun, recent_runs

Status = Literal["failing", "regressed", "slo", "watch", "ok", "new"]
# Worst first: a model's status is the worst that holds, and the overview sorts by it.
STATUS_ORDER: tuple[Status, ...] = ("failing", "regressed", "slo", "watch", "ok", "new")
BASELINE_RUNS = 10  # the baseline level is the median of a series' first runs since its baseline
WATCH_CHANGE = 0.05  # p50 this much above its baseline, with no finding yet, is worth a look
RUN_TABLE_ROWS = 50
# Which finding leads a model's status line: what users feel first.
LEAD_METRICS = ("latency_ms_p50", "latency_ms_p99", "throughput_per_s", "accuracy", "peak_rss_mb",
                "cuda_peak_mem_mb", "energy_j_per_inference", "model_size_mb")
FINDINGS_SHOWN = 30
ACTIONS_SHOWN = 20


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
    latest: TrendRun | None  # newest successful run
    last: TrendRun | None  # newest run of any status
    active: bool  # of the model's active variant

    def change(self, metric: str) -> float | None:
        """Relative change of `metric` from the baseline level to the newest successful run."""
        before = self.baseline.get(metric)
        now = self.latest.figures.get(metric) if self.latest else None
        return now / before - 1.0 if now is not None and before else None

    def values(self, metric: str) -> list[float | None]:
        return [run.figures.get(metric) for run in self.runs]


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
    """The whole report: when, from which database, every model."""

    generated_at: datetime
    database: str
    models: list[ModelView]

    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in STATUS_ORDER}
        for view in self.models:
            counts[view.status] += 1
        return counts

    def only(self, names: Sequence[str]) -> FleetReport:
        """The same report narrowed to some models (an owner's digest)."""
        wanted = set(names)
        return FleetReport(self.generated_at, self.database, [m for m in self.models if m.model.name in wanted])


def gather(
    db: Database, models: Sequence[ReportedModel], *, per_series: int = 1000, now: datetime | None = None
) -> FleetReport:
    """Read what the report shows of `models` (in the given order, worst status first)."""
    names = [m.name for m in models]
    runs = recent_runs(db, names, per_series)
    active = {info.name: info.active_variant for info in queries.list_models(db)}
    all_findings: dict[str, list[FindingRecord]] = defaultdict(list)
    for finding in findings_store.findings(db):
        all_findings[finding.model].append(finding)
    views = []
    for model in models:
        views.append(_model_view(db, model, runs.get(model.name, []), active.get(model.name, queries.BASELINE),
                                 all_findings.get(model.name, [])))
    order = {status: i for i, status in enumerate(STATUS_ORDER)}
    views.sort(key=lambda v: (order[v.status], v.model.name))
    return FleetReport(now or datetime.now(UTC), db.display_location(), views)


def _model_view(
    db: Database, model: ReportedModel, runs: list[TrendRun], active_variant: str, findings: list[FindingRecord]
) -> ModelView:
    by_key: dict[SeriesKey, list[TrendRun]] = defaultdict(list)
    for run in runs:
        by_key[run.key].append(run)
    since = findings_store.baselines(db, model.name) if runs else {}
    series = [
        _series_view(key, key_runs, since.get(key), key.variant == active_variant)
        for key, key_runs in by_key.items()
    ]
    series.sort(key=lambda s: (not s.active, s.key.variant, s.key.device, s.key.batch_size))
    open_findings = sorted((f for f in findings if f.state == "open"), key=_lead_first)
    past = [f for f in findings if f.state != "open"][:FINDINGS_SHOWN]
    model_actions = actions(db, model.name, limit=ACTIONS_SHOWN) if runs else []
    alerts = [e for e in events(db, model.name, limit=FINDINGS_SHOWN) if e.outcome == "alert"] if runs else []
    status, reason = _status(model, series, open_findings)
    recent = sorted(runs, key=lambda r: (r.started_at, r.run_id), reverse=True)[:RUN_TABLE_ROWS]
    return ModelView(
        model=model, status=status, status_reason=reason, active_variant=active_variant, series=series,
        open_findings=open_findings, past_findings=past, actions=model_actions, alerts=alerts,
        env_changes=findings_store.env_changes(db, model.name) if runs else [], recent_runs=recent,
    )


def _lead_first(finding: FindingRecord) -> tuple[int, int, int]:
    rank = LEAD_METRICS.index(finding.metric) if finding.metric in LEAD_METRICS else len(LEAD_METRICS)
    return (finding.verdict != "regression", rank, finding.key.batch_size)


def _series_view(key: SeriesKey, runs: list[TrendRun], since: datetime | None, active: bool) -> SeriesView:
    ok = [r for r in runs if r.status == "ok"]
    start = [r for r in ok if since is None or r.started_at >= since] or ok
    baseline: dict[str, float | None] = {}
    for metric in ("latency_ms_p50", "latency_ms_p99", "throughput_per_s", "peak_rss_mb"):
        values = [v for r in start[:BASELINE_RUNS] if (v := r.figures.get(metric)) is not None]
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
        return "failing", f"last run of {last.key.label()} {last.status}: {error[-1] if error else 'no error text'}"[:300]
    regressions = [f for f in open_findings if f.verdict == "regression"]
    if regressions:
        f = regressions[0]
        more = f" and {len(regressions) - 1} more" if len(regressions) > 1 else ""
        return "regressed", f"{f.metric} {100 * f.rel_change:+.1f} % on {f.key.label()}{more}"
    for s in active:
        for metric, limit in model.slo.items():
            value = s.latest.figures.get(metric) if s.latest else None
            if value is not None and value > limit:
                return "slo", f"{metric} {value:.4g} over its SLO {limit:g} on {s.key.label()}"
    for s in active:
        change = s.change("latency_ms_p50")
        if change is not None and change >= WATCH_CHANGE:
            return "watch", f"p50 {100 * change:+.1f} % from its baseline on {s.key.label()}, no finding yet"
    return "ok", "within its baseline"
