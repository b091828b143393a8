"""Trend charts with matplotlib's object API (Agg; never pyplot, whose global figure registry is
not thread-safe), all text drawn by Pillow: see `_Painter`. matplotlib is imported inside the
drawing code, so importing this module stays cheap."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reports.charts.pixels import decimate, png
from reports.charts.spec import ChartSpec, Line, timestamps
from reports.charts.style import (
    ALERT,
    DPI,
    ENV,
    FIG_SIZE,
    FONT,
    LIGHT,
    MARGINS,
    MAX_POINTS,
    MUTED,
    PX_PER_PT,
    SMALL_FONT,
    TEXT,
    TICK_LENGTH,
    TITLE_FONT,
    line_colour,
    tint,
)


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


@dataclass(frozen=True, slots=True)
class _Label:
    text: str
    xy: tuple[float, float]  # pixels, origin top left
    anchor: str  # Pillow text anchor, e.g. "la": left, ascender
    size: float = FONT  # points
    colour: str = TEXT
    rotate: bool = False  # 90 degrees counter-clockwise, centred on xy


# Text is drawn by Pillow onto the Agg buffer: matplotlib 3.11 rasterises each glyph in Python
# (~40 us a glyph, 0.5-1.5 ms a label, about half of a chart's time), FreeType through Pillow
# draws a label in ~0.05 ms, with the same font (matplotlib's DejaVu Sans) at the same sizes.
# matplotlib still chooses the ticks (its locators and formatters); only their labels move.
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
        fig = self.fig = Figure(figsize=FIG_SIZE, dpi=DPI, facecolor="white")
        self.canvas = FigureCanvasAgg(fig)
        fig.subplots_adjust(**MARGINS)
        ax = self.ax = fig.add_subplot()
        # Fixed (and empty) axis labels: placing them would measure the tick labels at each draw.
        ax.xaxis.set_label_coords(0.5, -0.3)
        ax.yaxis.set_label_coords(-0.1, 0.5)
        ax.grid(True, color="#E5E5E5", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(which="both", length=TICK_LENGTH, width=0.6, colors="#999999",
                       labelbottom=False, labelleft=False)  # labels: see _tick_labels
        ax.tick_params(which="minor", length=TICK_LENGTH / 2)
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
        return timestamps(times) / 86400.0 + self.epoch

    def _font(self, size: float) -> Any:
        font = self.fonts.get(size)
        if font is None:
            from PIL import ImageFont

            font = self.fonts[size] = ImageFont.truetype(
                self.font_path, size * PX_PER_PT, layout_engine=ImageFont.Layout.BASIC
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
        return png(image)

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
            lx, ly = decimate(x if line.times is None else self._x(line.times), y, MAX_POINTS)
            style = {"color": line_colour(i), "alpha": 1.0 if line.emphasis else LIGHT,
                     "zorder": 3 if line.emphasis else 2}
            add(lx, ly, None, linewidth=1.3 if line.emphasis else 0.8, **style)
            # A value between two gaps (or a single run) has no segment to show it: a dot does.
            present = np.isfinite(ly)
            alone = present & ~np.r_[False, present[:-1]] & ~np.r_[present[1:], False]
            if alone.any():
                add(lx[alone], ly[alone], None, linestyle="none", marker="o",
                    markersize=3 if line.emphasis else 2, markeredgewidth=0, **style)
        across = ax.get_yaxis_transform()  # x in axes fraction, y in data
        for level, colour in ((spec.baseline, MUTED), (spec.limit, ALERT)):
            if level is not None and not (spec.log_scale and level <= 0):
                add([0, 1], [level, level], across, color=colour, linestyle=":", linewidth=1.0, zorder=2)
        top = ax.get_xaxis_transform()  # x in data, y in axes fraction
        for at in self._x([m.at for m in spec.change_points]).tolist():
            add([at, at], [0, 1], top, color=ALERT, linestyle="--", linewidth=0.9, zorder=4)
        if spec.env_changes:
            ex = self._x([m.at for m in spec.env_changes])
            add(ex, np.ones(len(ex)), top, linestyle="none", marker="v", markersize=5, color=ENV,
                clip_on=False, zorder=5)
        if spec.failures:
            fx = self._x(spec.failures)
            add(fx, np.zeros(len(fx)), top, linestyle="none", marker="x", markersize=4,
                markeredgewidth=1.0, color=ALERT, clip_on=False, zorder=5)
        if spec.contended:
            cx = self._x(spec.contended)
            add(cx, np.zeros(len(cx)), top, linestyle="none", marker="o", markersize=3.5, markeredgewidth=0.8,
                markerfacecolor="none", color=MUTED, clip_on=False, zorder=5)
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
        box = _Box(left=MARGINS["left"] * width, right=MARGINS["right"] * width,
                   top=(1 - MARGINS["top"]) * height, bottom=(1 - MARGINS["bottom"]) * height,
                   height=height)
        header = box.top / 2 + 1  # middle of the title row
        draw = ImageDraw.Draw(image)
        labels: list[_Label] = []
        if not has_data:
            labels.append(_Label("no runs yet", ((box.left + box.right) / 2, (box.top + box.bottom) / 2),
                                 "mm", TITLE_FONT, MUTED))
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
                labels.append(_Label(m.label, (px + 3, box.top + 3), "la", SMALL_FONT, ALERT))
            for value, text, colour in ((spec.baseline, "baseline", MUTED), (spec.limit, "SLO", ALERT)):
                if value is None or (spec.log_scale and value <= 0):
                    continue
                py = height - float(to_px((0.0, value))[1])
                if box.top <= py <= box.bottom:
                    labels.append(_Label(text, (box.right - 2, py - 1), "rd", SMALL_FONT, colour))
        title = _fit(self._font(TITLE_FONT), spec.title, title_room)
        labels.append(_Label(title, (box.left, header), "lm", TITLE_FONT, "#222222"))
        self._draw_labels(image, draw, labels)

    def _tick_labels(self, labels: list[_Label], box: _Box, width: int) -> str:
        """The labels matplotlib would put at the ticks it drew: same locators and formatters (run
        once more, ~0.4 ms), laid out as matplotlib does (tick length plus its 3.5 pt pad), but
        kept inside the image. Returns the y axis offset text (e.g. "1e6"), for the unit label."""
        ax = self.ax
        gap = (TICK_LENGTH + 3.5) * PX_PER_PT
        font = self._font(FONT)
        locs, texts, offset = _ticks(ax.xaxis)
        xs = ax.get_xaxis_transform().transform(np.column_stack([locs, np.zeros(len(locs))]))[:, 0]
        for x, text in zip(xs.tolist(), texts, strict=True):
            half = font.getlength(text) / 2 + 1
            labels.append(_Label(text, (min(max(x, half), width - half), box.bottom + gap), "ma"))
        if offset:  # ConciseDateFormatter's year / month / day, under the last label as matplotlib does
            labels.append(_Label(offset, (box.right, box.bottom + gap + FONT * PX_PER_PT + 4), "ra"))
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
        font = self._font(FONT)
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
            colour = line_colour(i) if line.emphasis else tint(line_colour(i), LIGHT)
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
