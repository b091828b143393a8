"""Report charts: matplotlib (Agg) trend charts and Pillow sparklines as PNG bytes, each with alt text.

The daemon renders reports from a worker thread, so matplotlib is used only through its object API
(a `Figure` drawn by the Agg canvas) and never through `pyplot`, whose global figure registry is not
thread-safe. matplotlib is imported inside the drawing code: importing this module stays cheap for
callers that only want `describe` or `sparkline`.

A report draws a few hundred charts, so drawing is tuned (about 13 ms a chart on a slow 2-core
machine, against ~60 ms for a plain matplotlib figure): each thread refills one figure instead of
building new ones, and all text is drawn by Pillow, see `_Painter` in render.py.

A rendered chart is named by `ChartSpec.key()`, a digest of everything drawn, and the PNG bytes are
deterministic, so `render_many` can skip every chart whose file already exists.
"""

from reports.charts.drawing import ChartDrawer, render_many, write_atomic
from reports.charts.render import render_chart
from reports.charts.sparkline import sparkline
from reports.charts.spec import ChartSpec, Line, Marker
from reports.charts.style import CHART_SIZE
from reports.charts.text import describe

__all__ = [
    "CHART_SIZE", "ChartDrawer", "ChartSpec", "Line", "Marker", "describe", "render_chart", "render_many",
    "sparkline", "write_atomic",
]
