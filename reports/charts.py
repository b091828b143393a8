"""Report charts: matplotlib (Agg) trend charts and Pillow sparklines as PNG bytes, each with alt text.

The daemon renders reports from a worker thread, so matplotlib is used only through its object API
(a `Figure` drawn by the Agg canvas) and never through `pyplot`, whose global figure registry is not
thread-safe. matplotlib is imported inside the drawing code: importing this module stays cheap for
callers that only want `describe` or `sparkline`.

A report draws a few hundred charts, so drawing is tuned (about 13 ms a chart on a slow 2-core
machine, against ~60 ms for a plain matplotlib figure): each thread refills one figure instead of
building new ones, and all text is drawn by Pillow, see `_Painter`.

A rendered chart is named by `ChartSpec.key()`, a digest of everything drawn, and the PNG bytes are
deterministic, so `render_many` can skip every chart whose file already exists.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw

__all__ = [
    "CHART_SIZE", "ChartDrawer", "ChartSpec", "Line", "Marker", "describe", "render_chart", "render_many",
    "sparkline", "write_atomic",
]

# Part of every key: bump it when the drawing changes, so cached PNGs of the old style are redrawn.
_STYLE_VERSION = 2

# Size of a chart: 760 x 190 px.
_FIG_SIZE = (7.6, 1.9)
_DPI = 100
CHART_SIZE = (round(_FIG_SIZE[0] * _DPI), round(_FIG_SIZE[1] * _DPI))  # pixels of every chart
# Fixed margins (figure fractions); a layout engine would cost a second draw per chart.
_MARGINS = {"left": 0.085, "right": 0.985, "bottom": 0.2, "top": 0.84}
# Plotted points per line at most, about two per horizontal pixel of the axes.
_MAX_POINTS = int(2 * _FIG_SIZE[0] * _DPI * (_MARGINS["right"] - _MARGINS["left"]))
# zlib level of the palette PNGs: 3 is as fast as 1 and 4 % smaller; 6 costs 1.3 ms more a chart
# for files 7 % smaller.
_PNG_COMPRESS_LEVEL = 3

# Okabe-Ito, colour-blind safe; vermillion is left out of the lines: it marks change points,
# failures and the SLO.
_LINE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
_ALERT = "#D55E00"
_ENV = "#7E6B9A"
_MUTED = "#777777"
_FONT = 8
_TEXT = "#333333"
_TICK_LENGTH = 3  # points
_TITLE_FONT = 9
_SMALL_FONT = 7

# render_many draws in a process pool only when there are more charts than this to draw: a spawned
# worker costs ~0.5 s of start-up (interpreter, numpy, matplotlib, fonts) against ~13 ms a chart,
# so on 2 cores the pool wins from about 40 charts in a fresh process and 75 in the daemon.
_POOL_THRESHOLD = 64
_CHUNK = 8  # charts per task handed to a drawing process


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a chart; `None` values are gaps (e.g. a failed run). `times`, when given, are
    the line's own instants (series of one chart that ran at different times); else the chart's."""

    label: str
    values: Sequence[float | None]
    emphasis: bool = True
    times: Sequence[datetime] | None = None

    def __post_init__(self) -> None:
        # A tuple keeps the frozen dataclass honest (and hashable) when callers pass lists.
        object.__setattr__(self, "values", tuple(self.values))
        if self.times is not None:
            object.__setattr__(self, "times", tuple(self.times))


@dataclass(frozen=True, slots=True)
class Marker:
    """A labelled instant: a change point or an environment change."""

    at: datetime
    label: str


@dataclass(frozen=True, slots=True)
class ChartSpec:
    """Everything one chart draws; `times` are aware UTC, oldest first, one per value of every line."""

    title: str
    unit: str
    times: Sequence[datetime]
    lines: Sequence[Line]
    change_points: Sequence[Marker] = ()
    env_changes: Sequence[Marker] = ()
    failures: Sequence[datetime] = ()
    baseline: float | None = None
    limit: float | None = None
    log_scale: bool = False
    contended: Sequence[datetime] = ()  # runs on a busy host: marked, not drawn (detection skips them)

    def __post_init__(self) -> None:
        for name in ("times", "lines", "change_points", "env_changes", "failures", "contended"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for line in self.lines:
            times = self.times if line.times is None else line.times
            if len(line.values) != len(times):
                raise ValueError(
                    f"line {line.label!r} of chart {self.title!r} has {len(line.values)} values "
                    f"for {len(times)} times"
                )

    def key(self) -> str:
        """A short stable digest of everything drawn: the chart's file name, so an unchanged chart
        is not drawn again."""
        # Series are hashed as float64 bytes (None and NaN are the same gap): a repr of 1000 times
        # and values would cost ten times as much, and render_many keys every chart of a report.
        labels = (
            _STYLE_VERSION,
            self.title,
            self.unit,
            len(self.times),
            tuple((ln.label, bool(ln.emphasis)) for ln in self.lines),
            tuple((_iso(m.at), m.label) for m in self.change_points),
            tuple((_iso(m.at), m.label) for m in self.env_changes),
            tuple(_iso(t) for t in self.failures),
            tuple(_iso(t) for t in self.contended),
            _num(self.baseline),
            _num(self.limit),
            bool(self.log_scale),
        )
        digest = hashlib.sha256(repr(labels).encode())
        digest.update(_timestamps(self.times).astype("<f8").tobytes())
        for line in self.lines:
            if line.times is not None:
                digest.update(b"own-times")
                digest.update(_timestamps(line.times).astype("<f8").tobytes())
            digest.update(np.array(line.values, dtype="<f8").tobytes())
        return digest.hexdigest()[:16]


def _timestamps(times: Sequence[datetime]) -> np.ndarray:
    """POSIX seconds; naive times count as UTC, as matplotlib reads them."""
    return np.array(
        [t.timestamp() if t.tzinfo is not None else t.replace(tzinfo=UTC).timestamp() for t in times],
        dtype=float,
    )


def _iso(t: datetime) -> str:
    """UTC ISO text of an instant; naive times count as UTC, as matplotlib reads them."""
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.isoformat()


def _num(v: float | None) -> float | None:
    # float() so that numpy scalars and Python floats of equal value give one repr.
    return None if v is None else float(v)


# --------------------------------------------------------------------------------------------
# Alt text


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


# --------------------------------------------------------------------------------------------
# Trend charts: matplotlib (Agg) draws the axes and the data, Pillow all the text


def render_chart(spec: ChartSpec) -> bytes:
    """PNG bytes of the chart, 760 x 190 px (a palette PNG, ~18 KB); the same spec gives the
    same bytes. A spec without runs gives a chart that says "no runs yet".

    Each thread keeps one figure and refills it chart after chart: a new Figure with its Axes and
    ticks costs about as much again as drawing the chart. Should a drawing fail, the thread's
    figure is dropped, so that no half-cleared state reaches the next chart.
    """
    painter: _Painter | None = getattr(_local, "painter", None)
    if painter is None:
        painter = _local.painter = _Painter()
    try:
        return painter.render(spec)
    except BaseException:
        _local.painter = None
        raise


_local = threading.local()

# Text is drawn by Pillow onto the Agg buffer: matplotlib 3.11 rasterises each glyph in Python
# (~40 us a glyph, 0.5-1.5 ms a label, about half of a chart's time), FreeType through Pillow
# draws a label in ~0.05 ms, with the same font (matplotlib's DejaVu Sans) at the same sizes.
# matplotlib still chooses the ticks (its locators and formatters); only their labels move.
_PX_PER_PT = _DPI / 72
_LIGHT = 0.6  # opacity of lines without emphasis


@dataclass(frozen=True, slots=True)
class _Label:
    text: str
    xy: tuple[float, float]  # pixels, origin top left
    anchor: str  # Pillow text anchor, e.g. "la": left, ascender
    size: float = _FONT  # points
    colour: str = _TEXT
    rotate: bool = False  # 90 degrees counter-clockwise, centred on xy


class _Painter:
    """One figure and its Axes, styled once and refilled for each chart; one per thread.

    Refilling must leave no trace of the previous chart: every added artist is removed, and the
    data and view limits are reset to those of a new Axes (the tests compare a reused figure's
    bytes with a fresh one's).
    """

    def __init__(self) -> None:
        import matplotlib
        import matplotlib.dates as mdates
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.transforms import Bbox

        self.Line2D = Line2D
        self.Bbox = Bbox
        fig = self.fig = Figure(figsize=_FIG_SIZE, dpi=_DPI, facecolor="white")
        self.canvas = FigureCanvasAgg(fig)
        fig.subplots_adjust(**_MARGINS)
        ax = self.ax = fig.add_subplot()
        # Fixed (and empty) axis labels: placing them would measure the tick labels at each draw.
        ax.xaxis.set_label_coords(0.5, -0.3)
        ax.yaxis.set_label_coords(-0.1, 0.5)
        ax.grid(True, color="#E5E5E5", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(which="both", length=_TICK_LENGTH, width=0.6, colors="#999999",
                       labelbottom=False, labelleft=False)  # labels: see _tick_labels
        ax.tick_params(which="minor", length=_TICK_LENGTH / 2)
        ax.xaxis.offsetText.set_visible(False)
        ax.yaxis.offsetText.set_visible(False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_linewidth(0.6)
            ax.spines[side].set_color("#999999")
        locator = mdates.AutoDateLocator(tz=UTC, minticks=3, maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))
        self.log_scale: bool | None = None
        self._set_scale(False)
        self.epoch = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))
        self.artists: list[Any] = []  # what the last chart added, removed before the next
        self.font_path = str(Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf"))
        self.fonts: dict[float, Any] = {}  # per painter: FreeType faces are not for sharing threads

    def _set_scale(self, log: bool) -> None:
        if log == self.log_scale:
            return
        from matplotlib.ticker import MaxNLocator, ScalarFormatter

        ax = self.ax
        ax.set_yscale("log" if log else "linear")  # resets the y locators and formatters
        if log:
            # Plain numbers rather than mathtext powers of ten, which Pillow cannot typeset.
            ax.yaxis.set_major_formatter(_plain_log_formatter(minor=False))
            ax.yaxis.set_minor_formatter(_plain_log_formatter(minor=True))
        else:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        self.log_scale = log

    def _x(self, times: Sequence[datetime]) -> np.ndarray:
        """matplotlib date numbers (days since its epoch): a tenth of the cost of date2num."""
        return _timestamps(times) / 86400.0 + self.epoch

    def _font(self, size: float) -> Any:
        font = self.fonts.get(size)
        if font is None:
            from PIL import ImageFont

            font = self.fonts[size] = ImageFont.truetype(
                self.font_path, size * _PX_PER_PT, layout_engine=ImageFont.Layout.BASIC
            )
        return font

    def render(self, spec: ChartSpec) -> bytes:
        for artist in self.artists:
            artist.remove()
        self.artists.clear()
        has_data = bool(spec.times)
        self.ax.set_visible(has_data)
        if has_data:
            self._fill(spec)
        self.canvas.draw()
        width, height = self.canvas.get_width_height()
        image = Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        image = image.convert("RGB")
        self._annotate(image, spec, has_data)
        return _png(image)

    def _fill(self, spec: ChartSpec) -> None:
        ax = self.ax
        # Back to a new Axes' limits: no data (relim() afterwards would cost more) and a unit view,
        # which autoscaling keeps when there is nothing to scale to.
        ax.dataLim.set_points(self.Bbox.null().get_points())  # new arrays: Bboxes mutate theirs
        ax.ignore_existing_data_limits = True
        ax.viewLim.set_points(self.Bbox.unit().get_points())
        ax.set_autoscale_on(True)
        self._set_scale(spec.log_scale)
        x = self._x(spec.times)
        # The time axis spans the runs, whether or not they have values.
        ax.update_datalim([(x[0], 1.0), (x[-1], 1.0)], updatey=False)
        # Line2D objects added directly: ax.plot parses its arguments, and axhline/axvline
        # autoscale the view each time, which together cost a third of this method.
        add = self._add_line
        for i, line in enumerate(spec.lines):
            y = np.array(line.values, dtype=float)  # None -> NaN: a gap in the line
            hidden = ~np.isfinite(y)
            if spec.log_scale:
                hidden |= y <= 0  # no place on a log axis
            y[hidden] = np.nan
            lx, ly = _decimate(x if line.times is None else self._x(line.times), y, _MAX_POINTS)
            style = {"color": _line_colour(i), "alpha": 1.0 if line.emphasis else _LIGHT,
                     "zorder": 3 if line.emphasis else 2}
            add(lx, ly, None, linewidth=1.3 if line.emphasis else 0.8, **style)
            # A value between two gaps (or a single run) has no segment to show it: a dot does.
            present = np.isfinite(ly)
            alone = present & ~np.r_[False, present[:-1]] & ~np.r_[present[1:], False]
            if alone.any():
                add(lx[alone], ly[alone], None, linestyle="none", marker="o",
                    markersize=3 if line.emphasis else 2, markeredgewidth=0, **style)
        across = ax.get_yaxis_transform()  # x in axes fraction, y in data
        for level, colour in ((spec.baseline, _MUTED), (spec.limit, _ALERT)):
            if level is not None and not (spec.log_scale and level <= 0):
                add([0, 1], [level, level], across, color=colour, linestyle=":", linewidth=1.0, zorder=2)
        top = ax.get_xaxis_transform()  # x in data, y in axes fraction
        for at in self._x([m.at for m in spec.change_points]).tolist():
            add([at, at], [0, 1], top, color=_ALERT, linestyle="--", linewidth=0.9, zorder=4)
        if spec.env_changes:
            ex = self._x([m.at for m in spec.env_changes])
            add(ex, np.ones(len(ex)), top, linestyle="none", marker="v", markersize=5, color=_ENV,
                clip_on=False, zorder=5)
        if spec.failures:
            fx = self._x(spec.failures)
            add(fx, np.zeros(len(fx)), top, linestyle="none", marker="x", markersize=4,
                markeredgewidth=1.0, color=_ALERT, clip_on=False, zorder=5)
        if spec.contended:
            cx = self._x(spec.contended)
            add(cx, np.zeros(len(cx)), top, linestyle="none", marker="o", markersize=3.5, markeredgewidth=0.8,
                markerfacecolor="none", color=_MUTED, clip_on=False, zorder=5)
        if x[0] == x[-1]:
            ax.set_xlim(x[0] - 0.5, x[-1] + 0.5)  # a single instant: give the date axis some width
        ax.autoscale_view()

    def _add_line(self, x: Any, y: Any, transform: Any, **style: Any) -> None:
        line = self.Line2D(x, y, **style)
        if transform is not None:
            line.set_transform(transform)
        self.ax.add_line(line)  # also extends the data limits, in x or y only for blended transforms
        self.artists.append(line)

    def _annotate(self, image: Image.Image, spec: ChartSpec, has_data: bool) -> None:
        """All the chart's text, placed by the transforms of the drawn Axes."""
        width, height = image.size
        box = _Box(left=_MARGINS["left"] * width, right=_MARGINS["right"] * width,
                   top=(1 - _MARGINS["top"]) * height, bottom=(1 - _MARGINS["bottom"]) * height,
                   height=height)
        header = box.top / 2 + 1  # middle of the title row
        draw = ImageDraw.Draw(image)
        labels: list[_Label] = []
        if not has_data:
            labels.append(_Label("no runs yet", ((box.left + box.right) / 2, (box.top + box.bottom) / 2),
                                 "mm", _TITLE_FONT, _MUTED))
            title_room = box.right - box.left
        else:
            title_room = self._legend(draw, labels, spec.lines, box, header)
            y_offset = self._tick_labels(labels, box, width)
            unit = f"{spec.unit} ×{y_offset}" if y_offset else spec.unit
            labels.append(_Label(unit, (6, (box.top + box.bottom) / 2), "mm", rotate=True))
            to_px = self.ax.transData.transform
            for m, at in zip(spec.change_points, self._x([m.at for m in spec.change_points]).tolist(),
                             strict=True):
                px = float(to_px((at, 1.0))[0])
                labels.append(_Label(m.label, (px + 3, box.top + 3), "la", _SMALL_FONT, _ALERT))
            for value, text, colour in ((spec.baseline, "baseline", _MUTED), (spec.limit, "SLO", _ALERT)):
                if value is None or (spec.log_scale and value <= 0):
                    continue
                py = height - float(to_px((0.0, value))[1])
                if box.top <= py <= box.bottom:
                    labels.append(_Label(text, (box.right - 2, py - 1), "rd", _SMALL_FONT, colour))
        title = _fit(self._font(_TITLE_FONT), spec.title, title_room)
        labels.append(_Label(title, (box.left, header), "lm", _TITLE_FONT, "#222222"))
        self._draw_labels(image, draw, labels)

    def _tick_labels(self, labels: list[_Label], box: _Box, width: int) -> str:
        """The labels matplotlib would put at the ticks it drew: same locators and formatters (run
        once more, ~0.4 ms), laid out as matplotlib does (tick length plus its 3.5 pt pad), but
        kept inside the image. Returns the y axis offset text (e.g. "1e6"), for the unit label."""
        ax = self.ax
        gap = (_TICK_LENGTH + 3.5) * _PX_PER_PT
        font = self._font(_FONT)
        locs, texts, offset = _ticks(ax.xaxis)
        xs = ax.get_xaxis_transform().transform(np.column_stack([locs, np.zeros(len(locs))]))[:, 0]
        for x, text in zip(xs.tolist(), texts, strict=True):
            half = font.getlength(text) / 2 + 1
            labels.append(_Label(text, (min(max(x, half), width - half), box.bottom + gap), "ma"))
        if offset:  # ConciseDateFormatter's year / month / day, under the last label as matplotlib does
            labels.append(_Label(offset, (box.right, box.bottom + gap + _FONT * _PX_PER_PT + 4), "ra"))
        locs, texts, offset = _ticks(ax.yaxis)
        ys = ax.get_yaxis_transform().transform(np.column_stack([np.zeros(len(locs)), locs]))[:, 1]
        for y, text in zip(ys.tolist(), texts, strict=True):
            labels.append(_Label(text, (box.left - gap, box.height - y), "rm"))
        return offset

    def _legend(self, draw: ImageDraw.ImageDraw, labels: list[_Label], lines: Sequence[Line], box: _Box,
                y: float) -> float:
        """Entries right-aligned in the title row, where they hide no data; returns the room left
        for the title. Entries that would push the title under a third of the row are left out,
        and "+N" says how many."""
        if len(lines) < 2:
            return box.right - box.left
        font = self._font(_FONT)
        handle, gap, min_title = 16, 12, (box.right - box.left) / 3
        x = box.right
        for i in range(len(lines) - 1, -1, -1):
            line = lines[i]
            needed = font.getlength(line.label) + 4 + handle + gap
            if x - needed < box.left + min_title and i > 0:
                more = f"+{i + 1}"
                labels.append(_Label(more, (x, y), "rm"))
                x -= font.getlength(more) + gap
                break
            labels.append(_Label(line.label, (x, y), "rm"))
            x -= font.getlength(line.label) + 4
            colour = _line_colour(i) if line.emphasis else _tint(_line_colour(i), _LIGHT)
            draw.line([(x - handle, y), (x, y)], fill=colour, width=2 if line.emphasis else 1)
            x -= handle + gap
        return x - box.left

    def _draw_labels(self, image: Image.Image, draw: ImageDraw.ImageDraw, labels: list[_Label]) -> None:
        for label in labels:
            if not label.text:
                continue
            font = self._font(label.size)
            if not label.rotate:
                draw.text(label.xy, label.text, fill=label.colour, font=font, anchor=label.anchor)
                continue
            _, _, x1, y1 = font.getbbox(label.text, anchor="lt")
            mask = Image.new("L", (int(x1) + 2, int(y1) + 2))
            ImageDraw.Draw(mask).text((1, 1), label.text, fill=255, font=font, anchor="lt")
            mask = mask.rotate(90, expand=True)
            cx, cy = label.xy
            image.paste(label.colour, (round(cx - mask.width / 2), round(cy - mask.height / 2)), mask)


@dataclass(frozen=True, slots=True)
class _Box:
    """The Axes in image pixels (origin top left)."""

    left: float
    right: float
    top: float
    bottom: float
    height: int


def _ticks(axis: Any) -> tuple[np.ndarray, list[str], str]:
    """Tick locations in view, their labels and the axis offset text, as Axis.draw gets them: the
    formatter sees every location (ConciseDateFormatter labels relative to the neighbours). Minor
    ticks count where their formatter labels them (log scales under a few decades)."""
    lo, hi = sorted(axis.get_view_interval())
    tol = (hi - lo) * 1e-10
    kept_locs: list[float] = []
    kept_texts: list[str] = []
    offset = ""
    for locs, formatter in ((axis.get_majorticklocs(), axis.get_major_formatter()),
                            (axis.get_minorticklocs(), axis.get_minor_formatter())):
        locs = np.asarray(locs, dtype=float)
        if not len(locs):
            continue
        texts = formatter.format_ticks(locs)
        offset = offset or formatter.get_offset()
        for loc, text in zip(locs.tolist(), texts, strict=True):
            if text and lo - tol <= loc <= hi + tol:
                kept_locs.append(loc)
                kept_texts.append(text)
    return np.array(kept_locs, dtype=float), kept_texts, offset


def _plain_log_formatter(*, minor: bool) -> Any:
    """A log-axis formatter that labels the ticks matplotlib's LogFormatter would, in plain numbers."""
    from matplotlib.ticker import Formatter, LogFormatter

    class PlainLogFormatter(Formatter):
        def __init__(self) -> None:
            self.inner = LogFormatter(labelOnlyBase=not minor)

        def set_axis(self, axis: Any) -> None:
            super().set_axis(axis)
            self.inner.set_axis(axis)

        def set_locs(self, locs: Any) -> None:
            super().set_locs(locs)
            self.inner.set_locs(locs)

        def __call__(self, x: float, pos: int | None = None) -> str:
            return _fmt_tick(x) if x > 0 and self.inner(x, pos) else ""

    return PlainLogFormatter()


def _fmt_tick(v: float) -> str:
    return f"{v:,.0f}" if 1000 <= abs(v) < 1e5 else f"{v:.3g}"


def _fit(font: Any, text: str, room: float) -> str:
    """`text`, cut with an ellipsis to fit `room` pixels."""
    if font.getlength(text) <= room:
        return text
    while text and font.getlength(text + "…") > room:
        text = text[:-1]
    return text.rstrip() + "…" if text else ""


def _line_colour(i: int) -> str:
    return _LINE_COLOURS[i % len(_LINE_COLOURS)]


def _tint(colour: str, alpha: float) -> str:
    """`colour` at opacity `alpha` over white, as an opaque colour."""
    rgb = [int(colour[k:k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(c * alpha + 255 * (1 - alpha)):02x}" for c in rgb)


def _png(image: Image.Image) -> bytes:
    """A palette PNG: octree quantisation to 256 colours costs less than zlib spends on the RGB
    pixels and gives files a third of the size, with no visible loss on flat-coloured charts."""
    image = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _decimate(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points: the min and the max of each bucket, in time order, so that
    spikes survive; buckets with no value stay gaps."""
    n = len(y)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    per = -(-n // buckets)
    buckets = -(-n // per)
    size = buckets * per
    padded = np.full(size, np.nan)
    padded[:n] = y
    rows = padded.reshape(buckets, per)
    missing = np.isnan(rows)
    imin = np.where(missing, np.inf, rows).argmin(axis=1)
    imax = np.where(missing, -np.inf, rows).argmax(axis=1)
    base = np.arange(buckets) * per
    idx = np.empty((buckets, 2), dtype=np.intp)
    idx[:, 0] = base + np.minimum(imin, imax)
    idx[:, 1] = base + np.maximum(imin, imax)
    flat = np.minimum(idx, n - 1).ravel()
    out_y = y[flat]
    out_y[np.repeat(missing.all(axis=1), 2)] = np.nan
    return x[flat], out_y


# --------------------------------------------------------------------------------------------
# Sparklines (Pillow)


def sparkline(
    values: Sequence[float | None],
    *,
    width: int = 120,
    height: int = 28,
    highlight_last: bool = True,
    color: str = "#0072B2",
) -> bytes:
    """A tiny transparent PNG trend line: Pillow draws one in ~0.5 ms, against ~13 ms for a
    matplotlib chart, and the fleet overview shows one per model.

    None values are skipped (the line joins their neighbours); fewer than two values give a blank
    image of the same size.
    """
    scale = 2  # drawn at twice the size, then averaged down 2x2: anti-aliasing Pillow lines lack
    rgb = ImageColor.getrgb(color)[:3]
    # The background is the line's own colour, fully transparent: averaging then only blends alpha,
    # so edges get no pale fringe on dark backgrounds, and the PNG holds one colour (~1 KB).
    image = Image.new("RGBA", (width * scale, height * scale), (*rgb, 0))
    y = np.array(values, dtype=float)  # None -> NaN
    idx = np.flatnonzero(np.isfinite(y))
    if len(idx) >= 2:
        w, h = image.size
        pad = 3 * scale  # room for the line width and the end dot
        xs, ys = idx.astype(float), y[idx]
        xs, ys = _decimate(xs, ys, 2 * w)
        span = float(max(len(y) - 1, 1))
        px = pad + xs / span * (w - 2 * pad)
        lo, hi = float(ys.min()), float(ys.max())
        py = pad + (hi - ys) / (hi - lo) * (h - 2 * pad) if hi > lo else np.full(len(ys), h / 2)
        points = list(zip(px.tolist(), py.tolist(), strict=True))
        draw = ImageDraw.Draw(image)
        opaque = (*rgb, 255)
        draw.line(points, fill=opaque, width=3 * scale // 2, joint="curve")
        if highlight_last:
            r = 2 * scale
            lx, ly = points[-1]
            draw.ellipse((lx - r, ly - r, lx + r, ly + r), fill=opaque)
    image = image.reduce(scale)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Batch rendering into a cache directory


def render_many(specs: Mapping[str, ChartSpec], out_dir: Path, *, workers: int = 1) -> dict[str, str]:
    """Render every spec to `out_dir/<key>.png` unless that file exists; returns {name: file name}.

    Files are written atomically (a temporary name in `out_dir`, then `os.replace`), so the daemon's
    HTTP server never serves half a PNG.
    """
    with ChartDrawer(workers) as drawer:
        names = drawer.start(specs, out_dir)
        drawer.finish()
    return names


class ChartDrawer:
    """Draws charts into a folder: in this process and, when many are to be drawn, in `workers - 1`
    spawned processes too (spawn, not fork: the caller may be a multi-threaded daemon).

    `start` hands every chart to the other processes and returns at once, so the caller can write
    its pages meanwhile; `finish` then takes back the chunks nobody has begun, from the back of the
    queue (a pending future can be cancelled), draws them here, and waits for the rest. A spawned
    process needs about a second to start (interpreter, numpy, matplotlib, fonts): `warm_up()`
    starts them early, e.g. while the report's data is read, when many charts will be drawn.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.drawn = 0
        self._pool: ProcessPoolExecutor | None = None
        self._jobs: list[tuple[list[tuple[str, ChartSpec]], Future[int] | None]] = []
        self._queued: set[str] = set()
        self._out_dir = ""

    def __enter__(self) -> ChartDrawer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def warm_up(self) -> None:
        """Start the drawing processes now (each draws one tiny chart to load what it needs); once."""
        if self._pool is not None:
            return
        pool = self._ensure_pool()
        if pool is not None:
            for _ in range(self.workers - 1):
                pool.submit(_warm)

    def start(self, specs: Mapping[str, ChartSpec], out_dir: Path) -> dict[str, str]:
        """Queue the charts whose files are missing (after any queued before, into the same folder);
        {name: file name} for every spec. The other processes begin at once."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names: dict[str, str] = {}
        todo: dict[str, ChartSpec] = {}  # by key: equal charts are drawn once
        for name, spec in specs.items():
            key = spec.key()
            file_name = f"{key}.png"
            names[name] = file_name
            if key not in todo and not _cached(out_dir / file_name):
                todo[key] = spec
        items = [(key, spec) for key, spec in todo.items() if key not in self._queued]
        self._queued.update(key for key, _ in items)
        self.drawn += len(items)
        if self._out_dir and self._out_dir != str(out_dir):
            raise ValueError(f"one ChartDrawer draws into one folder, {self._out_dir}, not {out_dir}")
        self._out_dir = str(out_dir)
        chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
        pool = self._ensure_pool() if len(items) > _POOL_THRESHOLD or self._pool is not None else None
        self._jobs += [(chunk, pool.submit(_render_chunk, chunk, self._out_dir) if pool else None) for chunk in chunks]
        return names

    def finish(self) -> None:
        """Draw here every chunk no other process has begun (from the back), then wait for the rest."""
        jobs, self._jobs = self._jobs, []
        taken = 0
        for chunk, future in reversed(jobs):
            if future is not None and not future.cancel():
                break  # this one and all before it are another process's
            _render_chunk(chunk, self._out_dir)
            taken += 1
        for _chunk, future in jobs[: len(jobs) - taken]:
            if future is not None:
                future.result()

    def _ensure_pool(self) -> ProcessPoolExecutor | None:
        if self.workers > 1 and self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=context,
                                             initializer=_exit_with_parent, initargs=(os.getpid(),))
        return self._pool


def _exit_with_parent(parent: int) -> None:
    """In a drawing process: exit once the process that started it is gone. A daemon killed with
    SIGKILL (or by the OOM killer) never shuts its pool down, and idle pool processes would
    otherwise wait for work forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="perfguard-parent-watch", daemon=True).start()


def _warm() -> int:
    render_chart(ChartSpec("", "", [datetime(2026, 1, 1, tzinfo=UTC)] * 2, [Line("", [0.0, 1.0])]))
    return 0


def _cached(path: Path) -> bool:
    # An empty file is what a crash between rename and writeback can leave on some file systems.
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _render_chunk(items: list[tuple[str, ChartSpec]], out_dir: str) -> int:
    for key, spec in items:
        write_atomic(Path(out_dir) / f"{key}.png", render_chart(spec))
    return len(items)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would force 0600 on a file the web server reads).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
