"""Which charts a model gets, built from its view: latency per series with its change points,
environment changes, failed runs, baseline and SLO; then memory, throughput, accuracy and energy
where the model has them. Also the sparkline of the overview and each chart's table fallback."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from monitor.core.metrics import WATCHED_LATENCY
from monitor.core.series import FindingRecord
from reports.charts import ChartSpec, Line, Marker, describe
from reports.data import ModelView, SeriesView

TABLE_ROWS = 24  # rows of a chart's table fallback, spread over its window
SPARK_RUNS = 120
SLO_SHOWN_WITHIN = 2.0  # a latency SLO line is drawn when within this factor of the highest p99
WORKLOAD_TITLES = {"infer": "Latency", "train": "Training step", "load": "Latency under load"}
SHORT = {
    "latency_ms_p50": "p50", "latency_ms_p99": "p99", "throughput_per_s": "throughput", "peak_rss_mb": "RSS",
    "cuda_peak_mem_mb": "CUDA mem", "model_size_mb": "size", "accuracy": "accuracy",
    "energy_j_per_inference": "energy", "rel_to_reference": "vs reference", "probe_blas_ms": "BLAS probe",
    "probe_python_ms": "Python probe",
}


@dataclass(frozen=True, slots=True)
class NamedChart:
    """A chart of a model page: a stable name (for its file), its spec and the alt text."""

    name: str
    kind: str  # latency | relative | memory | throughput | accuracy | energy | host
    spec: ChartSpec
    alt: str


def model_charts(view: ModelView) -> list[NamedChart]:
    """Every chart of the model's page, latency first (one per series, active variant first)."""
    charts = [latency_chart(view, s) for s in view.series]
    others = (
        ("relative", "Against the frozen reference (host drift cancelled)", "x reference", ("rel_to_reference",)),
        ("memory", "Peak memory", "MiB", ("peak_rss_mb", "cuda_peak_mem_mb")),
        ("throughput", "Throughput", "items/s", ("throughput_per_s",)),
        ("accuracy", "Accuracy", "accuracy", ("accuracy",)),
        ("energy", "Energy per inference", "J", ("energy_j_per_inference",)),
        ("host", "Host-speed probe (the same fixed work in every run)", "ms", ("probe_blas_ms", "probe_python_ms")),
    )
    for kind, title, unit, metrics in others:
        chart = _per_series(view, kind, title, unit, metrics)
        if chart is not None:
            charts.append(chart)
    return charts


def primary_latency(view: ModelView) -> NamedChart | None:
    """The chart an email shows: the latency of the primary series."""
    return latency_chart(view, view.primary) if view.primary is not None else None


def spark_values(series: SeriesView) -> list[float | None]:
    """The p50 of the series' last usable runs, for the overview's sparkline."""
    return [r.figure("latency_ms_p50") for r in series.runs if r.usable][-SPARK_RUNS:]


def table(spec: ChartSpec, rows: int = TABLE_ROWS) -> tuple[list[str], list[list[object]]]:
    """The table fallback of a chart: a header of line labels, and rows spread evenly over the runs
    (first and last included) as [time, value...]."""
    header = [line.label for line in spec.lines]
    if not spec.lines:
        return header, []
    times = spec.times
    count = len(times)
    picks = sorted({round(i * (count - 1) / max(rows - 1, 1)) for i in range(min(rows, count))}) if count else []
    positions = [{t: i for i, t in enumerate(line.times)} if line.times is not None else None
                 for line in spec.lines]
    body: list[list[object]] = []
    for i in picks:
        when = times[i]
        values: list[object] = []
        for line, index in zip(spec.lines, positions, strict=True):
            at = i if index is None else index.get(when)
            values.append(None if at is None else line.values[at])
        body.append([when.strftime("%Y-%m-%d %H:%M"), *values])
    return header, body


def latency_chart(view: ModelView, series: SeriesView) -> NamedChart:
    """p50 (p90, p99 lighter) of one series, with its change points, environment changes, failed
    runs, baseline level and the model's latency SLO."""
    key = series.key
    times = [r.started_at for r in series.runs]
    lines = [
        Line("p50", series.values("latency_ms_p50")),
        Line("p90", series.values("latency_ms_p90"), emphasis=False),
        Line("p99", series.values("latency_ms_p99"), emphasis=False),
    ]
    findings = [f for f in _series_findings(view, series) if f.metric in WATCHED_LATENCY]
    limit = view.model.slo.get("latency_ms_p99", view.model.slo.get("latency_ms_p50")) if key.is_inference else None
    highest = max((v for v in series.values("latency_ms_p99") if v is not None), default=None)
    if limit is not None and highest is not None and limit > SLO_SHOWN_WITHIN * highest:
        limit = None  # far above every run: drawing it would flatten the runs into one line
    spec = ChartSpec(
        title=f"{WORKLOAD_TITLES[key.mode]}, {key.variant} on {key.device}, batch {key.batch_size}"
              + (f", {key.concurrency} callers" if key.mode == "load" else ""),
        unit="ms",
        times=times,
        lines=lines,
        change_points=_change_points(findings, times),
        env_changes=_env_markers(view, times),
        failures=[r.started_at for r in series.runs if r.status != "ok"],
        contended=[r.started_at for r in series.runs if r.status == "ok" and not r.usable],
        baseline=series.baseline.get("latency_ms_p50"),
        limit=limit,
    )
    return NamedChart(f"{view.model.name}|latency|{key.label()}", "latency", spec, describe(spec))


def _per_series(
    view: ModelView, kind: str, title: str, unit: str, metrics: Sequence[str]
) -> NamedChart | None:
    """One chart with a line per series (and metric) that has values; None when none has any."""
    lines: list[Line] = []
    all_times: list[datetime] = []
    markers: list[Marker] = []
    for series in view.series:
        times = [r.started_at for r in series.runs]
        for metric in metrics:
            values = series.values(metric)
            if all(v is None for v in values):
                continue
            label = series.key.label() if len(metrics) == 1 else f"{SHORT[metric]} {series.key.label()}"
            lines.append(Line(label, values, emphasis=series.active, times=times))
            all_times.extend(times)
            findings = [f for f in _series_findings(view, series) if _marks(f, metric)]
            markers.extend(_change_points(findings, times))
    if not lines:
        return None
    span = sorted(set(all_times))
    spec = ChartSpec(title=title, unit=unit, times=span, lines=lines, change_points=markers,
                     env_changes=_env_markers(view, span))
    return NamedChart(f"{view.model.name}|{kind}", kind, spec, describe(spec))


def _marks(finding: FindingRecord, metric: str) -> bool:
    """Whether a finding is drawn on the chart of `metric`: the relative chart shows the p50
    findings of the relative reading, which is what it plots."""
    if metric == "rel_to_reference":
        return finding.metric == "latency_ms_p50" and finding.reading == "relative"
    return finding.metric == metric


def _series_findings(view: ModelView, series: SeriesView) -> list[FindingRecord]:
    return [f for f in (*view.open_findings, *view.past_findings) if f.key == series.key]


def _change_points(findings: Sequence[FindingRecord], times: Sequence[datetime]) -> list[Marker]:
    if not times:
        return []
    first, last = times[0], times[-1]
    labels: dict[datetime, list[str]] = {}
    for f in findings:
        if first <= f.change_at <= last:
            labels.setdefault(f.change_at, []).append(f"{SHORT.get(f.metric, f.metric)} {100 * f.rel_change:+.0f} %")
    # Metrics that changed at the same run share one marker, so their labels do not overprint.
    return [Marker(at, ", ".join(sorted(texts))) for at, texts in sorted(labels.items())]


def _env_markers(view: ModelView, times: Sequence[datetime]) -> list[Marker]:
    if not times:
        return []
    first, last = times[0], times[-1]
    markers = []
    for _run_id, at, diff in view.env_changes:
        if first <= at <= last:
            label = ", ".join(f"{k} {pair(v)}" for k, v in list(diff.items())[:2])
            markers.append(Marker(at, label))
    return markers


def pair(value: object) -> str:
    """An environment change's [before, after] as "before → after" (anything else as it is)."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{value[0]} → {value[1]}"
    return str(value)
