"""HTML from report data: the static site (index + a page per model + chart images) and the bodies of
the digest and alert emails, all from the same autoescaped Jinja2 templates.

The site opens from disk with no server: relative links only, images as PNG files next to the pages.
Files are replaced atomically, so the daemon's HTTP endpoint never serves half a page, and chart
files are named by a digest of their data, so a refresh draws only the charts whose data changed.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from monitor.core.actions import ActionRecord
from monitor.core.catalog import runtime_of
from monitor.core.series import FindingRecord, SeriesKey
from reports.charts import (
    CHART_SIZE,
    ChartDrawer,
    render_chart,
    sparkline,
    write_atomic,
)
from reports.data import FleetReport, ModelView
from reports.figures import (
    NamedChart,
    latency_chart,
    model_charts,
    pair,
    primary_latency,
    spark_values,
    table,
)
from reports.mail import InlineImage
from storage.rule_events import RuleEvent

IMAGE_DIR = "img"
PAGE_DIR = "models"
SPARK_SIZE = (120, 28)
# Mail is read 600 px wide; less the page's padding (style.css .page.mail).
MAIL_WIDTH = 600
MAIL_CHART_WIDTH = MAIL_WIDTH - 48


@dataclass(frozen=True, slots=True)
class ChartView:
    """A chart as a template shows it: image address, size, alt text and its table fallback."""

    title: str
    src: str
    alt: str
    width: int
    height: int
    table: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """What `write_site` wrote."""

    index: Path
    pages: dict[str, Path]
    charts: int  # charts on the pages
    drawn: int  # of which drawn now (the others were unchanged)
    report: FleetReport  # what was written


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """An email's subject, both bodies and the images its HTML refers to by cid."""

    subject: str
    html: str
    text: str
    images: list[InlineImage] = field(default_factory=list)


def environment() -> Environment:
    """The templates with autoescaping for HTML (not for the plain-text email parts)."""
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters.update(when=_when, pair=pair, cause=cause_text, runtime=_runtime)
    env.globals.update(num=_num, pct=_pct)
    return env


def _runtime(recipe: str | None) -> str:
    """The runtime a recipe's candidate runs on, when it is not torch ('' otherwise)."""
    return runtime_of(recipe) or ""


def page_name(model: str) -> str:
    """A file name for the model's page that is safe on every file system and in a URL, and unique."""
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:60] or "model"
    return f"{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}.html"


def write_site(
    report: FleetReport,
    out_dir: Path,
    *,
    workers: int = 1,
    drawer: ChartDrawer | None = None,
    only: Collection[str] | None = None,
) -> Site:
    """Write index.html, one page per model and their images under `out_dir`; remove images and pages
    no longer used. Pages are written while other processes draw the charts (see `ChartDrawer`).

    With `only`, just the index and those models' pages are written (the daemon after one model's
    runs) and nothing is removed: the other pages still use their images."""
    env = environment()
    images = out_dir / IMAGE_DIR
    pages_dir = out_dir / PAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    pages_dir.mkdir(parents=True, exist_ok=True)
    paged = [view for view in report.models if only is None or view.model.name in only]
    with (drawer if drawer is not None else ChartDrawer(workers)) as drawing:
        already = drawing.drawn
        if only is None and not any(images.iterdir()):
            drawing.warm_up()  # an empty folder: every chart is to be drawn
        charts: dict[str, list[NamedChart]] = {}
        files: dict[str, str] = {}
        for view in paged:  # queued model by model: other processes start drawing with the first
            charts[view.model.name] = model_charts(view)
            files.update(drawing.start({chart.name: chart.spec for chart in charts[view.model.name]}, images))
        sparks = {}
        for view in report.models:
            for series in view.series:
                if series.active:
                    sparks[(view.model.name, series.key)] = _spark_file(images, spark_values(series), series.key)
        # Pages are rendered while other processes draw, and written once every chart they show is
        # on disk: a reader never gets a page whose images are still missing.
        index = out_dir / "index.html"
        texts = {index: env.get_template("index.html").render(report=report, sparks=_with_prefix(sparks, "img/"),
                                                               link=_link("models/"))}
        pages = {}
        for view in paged:
            views = [_chart_view(chart, f"../{IMAGE_DIR}/{files[chart.name]}") for chart in charts[view.model.name]]
            path = pages_dir / page_name(view.model.name)
            texts[path] = env.get_template("model.html").render(report=report, view=view, charts=views)
            pages[view.model.name] = path
        drawing.finish()
        drawn = drawing.drawn - already
    for path, text in texts.items():
        _write(path, text)
    if only is not None:
        return Site(index, pages, len(files), drawn, report)
    used = set(files.values()) | {s.src for s in sparks.values()}
    for name in set(os.listdir(images)) - used:
        if name.endswith(".png"):
            (images / name).unlink(missing_ok=True)
    for name in set(os.listdir(pages_dir)) - {p.name for p in pages.values()}:
        if name.endswith(".html"):
            (pages_dir / name).unlink(missing_ok=True)
    return Site(index, pages, len(files), drawn, report)


def render_digest(report: FleetReport, recipient: str, report_url: str | None = None) -> RenderedEmail:
    """The digest of `report` (already narrowed to the recipient's models): the overview table with a
    sparkline per series, and the latency chart of every model that is not ok."""
    env = environment()
    images: dict[str, InlineImage] = {}
    sparks = {}
    for view in report.models:
        for series in view.series:
            if series.active:
                data = sparkline(spark_values(series), width=SPARK_SIZE[0], height=SPARK_SIZE[1])
                sparks[(view.model.name, series.key)] = _inline(images, "spark", data, SPARK_SIZE,
                                                                f"p50 trend of {series.key.label()}")
    charts = {}
    for view in report.models:
        if view.status in ("failing", "regressed", "slo", "watch") and view.primary and view.primary.latest:
            chart = primary_latency(view)
            if chart is not None:
                charts[view.model.name] = _inline_chart(images, chart)
    counts = report.counts()
    subject = digest_subject(counts, len(report.models))
    context = dict(report=report, views=report.models, recipient=recipient, counts=counts, sparks=sparks,
                   charts=charts, link=_link(_join(report_url, "models/")) if report_url else _no_link,
                   report_url=report_url, subject=subject)
    html = env.get_template("digest.html").render(**context)
    text = env.get_template("digest.txt").render(**context)
    return RenderedEmail(subject, html, text, list(images.values()))


def render_alert(
    view: ModelView,
    report: FleetReport,
    findings: Sequence[FindingRecord] = (),
    rule_alerts: Sequence[RuleEvent] = (),
    actions: Sequence[ActionRecord] = (),
    report_url: str | None = None,
) -> RenderedEmail:
    """One model's alert: its new findings, rule alerts and actions, with the latency chart of the
    series the first finding is on."""
    env = environment()
    images: dict[str, InlineImage] = {}
    series = next((s for s in view.series if findings and s.key == findings[0].key), view.primary)
    chart_view = _inline_chart(images, latency_chart(view, series)) if series is not None else None
    subject = alert_subject(view.model.name, findings, rule_alerts, actions)
    page = _join(report_url, "models/" + page_name(view.model.name)) if report_url else None
    context = dict(report=report, view=view, findings=list(findings), rule_alerts=list(rule_alerts),
                   actions=list(actions), chart_view=chart_view, report_url=page, subject=subject)
    html = env.get_template("alert.html").render(**context)
    text = env.get_template("alert.txt").render(**context)
    return RenderedEmail(subject, html, text, list(images.values()))


def digest_subject(counts: dict[str, int], models: int) -> str:
    bad = [f"{n} {status}" for status, n in counts.items() if n and status not in ("ok", "new")]
    if not models:
        return "perfguard digest: no models"
    if not bad:
        return f"perfguard digest: all {models} model{'s' if models != 1 else ''} ok"
    return f"perfguard digest: {', '.join(bad)} of {models} model{'s' if models != 1 else ''}"


def alert_subject(
    model: str, findings: Sequence[FindingRecord], rule_alerts: Sequence[RuleEvent], actions: Sequence[ActionRecord]
) -> str:
    parts = [f"{f.metric} {100 * f.rel_change:+.1f} % ({f.key.label()})" for f in findings]
    parts += [f"{e.rule}" for e in rule_alerts]
    parts += [f"{a.kind} {a.status}" for a in actions]
    head = parts[0] if parts else "update"
    more = f" and {len(parts) - 1} more" if len(parts) > 1 else ""
    return _one_line(f"perfguard alert: {model}: {head}{more}")


def cause_text(finding: FindingRecord) -> str:
    """Why a finding happened, in a few words: what its reading compared, or what the A/B said."""
    c = finding.confirmation or {}
    if finding.reading == "relative" and finding.cause:
        return (f"{finding.cause}: against its frozen reference {_num(c.get('ratio_before'), '%.3f')} → "
                f"{_num(c.get('ratio_after'), '%.3f')}x (as measured, p50 {_num(c.get('absolute_p50_ms_before'))} → "
                f"{_num(c.get('absolute_p50_ms_after'))} ms)")
    if finding.reading == "reference" and finding.cause:
        probe = f"{_num(c.get('probe_blas_ms_before'))} → {_num(c.get('probe_blas_ms_after'))} ms"
        return (f"{finding.cause}: the frozen reference {_num(c.get('reference_ms_before'))} → "
                f"{_num(c.get('reference_ms_after'))} ms while the host probe went {probe}")
    if finding.reading == "normalised":
        return ("not attributed: the reference was lost; read against the host probe until a new one is frozen "
                "(at the next stable point when its file was damaged, else once a baseline is accepted)")
    if finding.cause is None and c.get("reference_lost"):
        text = f"not attributed: its frozen reference {c.get('reference_id')} was damaged ({c['reference_lost']})"
        if c.get("refrozen_as") is not None:
            return f"{text}; frozen anew as reference {c['refrozen_as']} at {str(c.get('refrozen_at', ''))[:16]}"
        return f"{text}; a new one is frozen at the next stable point"
    if finding.cause is None:
        if "error" in c:
            return f"not attributed: {str(c['error']).splitlines()[0][:160]}"
        return "not attributed yet" if finding.metric == "latency_ms_p50" else "–"
    parts = [finding.cause]
    if c.get("model_change") is not None:
        parts.append(f"model {100 * c['model_change']:+.1f} %")
    if c.get("environment_change") is not None:
        parts.append(f"frozen copy {100 * c['environment_change']:+.1f} %")
    text = ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
    return f"{text} ({c['why']})" if c.get("why") else text


def _chart_view(chart: NamedChart, src: str) -> ChartView:
    header, rows = table(chart.spec)
    return ChartView(chart.spec.title, src, chart.alt, *CHART_SIZE, {"header": header, "rows": rows})


def _inline_chart(images: dict[str, InlineImage], chart: NamedChart) -> ChartView:
    """A chart for an email: inline image and alt text, shown at MAIL_CHART_WIDTH (mail clients
    heed the width attribute, not CSS); no table (mail clients cannot fold one away)."""
    view = _inline(images, "chart", render_chart(chart.spec), CHART_SIZE, chart.alt)
    height = round(CHART_SIZE[1] * MAIL_CHART_WIDTH / CHART_SIZE[0])
    return ChartView(chart.spec.title, view.src, chart.alt, MAIL_CHART_WIDTH, height)


def _inline(images: dict[str, InlineImage], kind: str, data: bytes, size: tuple[int, int], alt: str) -> ChartView:
    cid = f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}@perfguard"
    images.setdefault(cid, InlineImage(cid, data, filename=f"{kind}.png"))
    return ChartView(alt, f"cid:{cid}", alt, size[0], size[1])


def _spark_file(images: Path, values: list[float | None], key: SeriesKey) -> ChartView:
    data = sparkline(values, width=SPARK_SIZE[0], height=SPARK_SIZE[1])
    name = f"spark-{hashlib.sha256(data).hexdigest()[:16]}.png"
    path = images / name
    if not path.exists():
        write_atomic(path, data)
    return ChartView("trend", name, f"p50 trend of {key.label()}", SPARK_SIZE[0], SPARK_SIZE[1])


def _with_prefix(sparks: dict[Any, ChartView], prefix: str) -> dict[Any, ChartView]:
    return {k: ChartView(v.title, prefix + v.src, v.alt, v.width, v.height) for k, v in sparks.items()}


def _link(prefix: str) -> Any:
    return lambda view: prefix + page_name(view.model.name)


def _no_link(_view: ModelView) -> str:
    return "#"


def _join(base: str | None, path: str) -> str:
    return (base or "").rstrip("/") + "/" + path


def _write(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def _when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _num(value: float | None, fmt: str = "%.4g") -> str:
    return "–" if value is None else fmt % value


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} %"


def _one_line(text: str) -> str:
    return re.sub(r"[\r\n\t]+", " ", text).strip()[:250]
