"""A chart in words: the alt text of each image, for screen readers and mail clients that block
images."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from reports.charts.spec import ChartSpec


def describe(spec: ChartSpec) -> str:
    """Alt text: what the chart shows, in one or two sentences."""
    head = f"{spec.title} ({spec.unit})" if spec.unit else spec.title
    n = len(spec.times)
    if n == 0:
        return f"{head}: no runs yet."
    first_day, last_day = _day(spec.times[0]), _day(spec.times[-1])
    span = f"on {first_day}" if first_day == last_day else f"from {first_day} to {last_day}"
    parts: list[str] = []
    line = next((ln for ln in spec.lines if ln.emphasis), spec.lines[0] if spec.lines else None)
    if line is not None:
        present = [float(v) for v in line.values if v is not None and math.isfinite(v)]
        if not present:
            parts.append(f"{line.label}: no values")
        elif len(present) == 1:
            parts.append(f"{line.label} {_fmt(present[0])}")
        else:
            first, last = present[0], present[-1]
            text = f"{line.label} from {_fmt(first)} to {_fmt(last)}"
            if first != 0:
                text += f" ({(last - first) / abs(first) * 100:+.1f} %)"
            parts.append(text)
    if spec.change_points:
        shown = "; ".join(f"{_day(m.at)}: {m.label}" for m in spec.change_points[:3])
        more = f"; {len(spec.change_points) - 3} more" if len(spec.change_points) > 3 else ""
        parts.append(f"{_count(len(spec.change_points), 'change point')} ({shown}{more})")
    if spec.env_changes:
        parts.append(_count(len(spec.env_changes), "environment change"))
    if spec.failures:
        parts.append(_count(len(spec.failures), "failed run"))
    if spec.contended:
        parts.append(f"{_count(len(spec.contended), 'run')} on a busy host, not drawn")
    if spec.baseline is not None:
        parts.append(f"baseline {_fmt(spec.baseline)}")
    if spec.limit is not None:
        parts.append(f"SLO {_fmt(spec.limit)}")
    text = f"{head} over {_count(n, 'run')} {span}"
    return f"{text}: {'; '.join(parts)}." if parts else f"{text}."


def _day(t: datetime) -> str:
    if t.tzinfo is not None:
        t = t.astimezone(UTC)
    return t.date().isoformat()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt(v: float) -> str:
    """Three significant digits, without exponents for the magnitudes charts show."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"
