"""How every chart looks: its size, margins, colours and fonts, defined once; `STYLE_VERSION` is
part of every chart's key, so a change of style redraws the cached PNGs."""

from __future__ import annotations

# Part of every key: bump it when the drawing changes, so cached PNGs of the old style are redrawn.
STYLE_VERSION = 2
# Size of a chart: 760 x 190 px.
FIG_SIZE = (7.6, 1.9)
DPI = 100
CHART_SIZE = (round(FIG_SIZE[0] * DPI), round(FIG_SIZE[1] * DPI))  # pixels of every chart
# Fixed margins (figure fractions); a layout engine would cost a second draw per chart.
MARGINS = {"left": 0.085, "right": 0.985, "bottom": 0.2, "top": 0.84}
# Plotted points per line at most, about two per horizontal pixel of the axes.
MAX_POINTS = int(2 * FIG_SIZE[0] * DPI * (MARGINS["right"] - MARGINS["left"]))
# zlib level of the palette PNGs: 3 is as fast as 1 and 4 % smaller; 6 costs 1.3 ms more a chart
# for files 7 % smaller.
PNG_COMPRESS_LEVEL = 3
# Okabe-Ito, colour-blind safe; vermillion is left out of the lines: it marks change points,
# failures and the SLO.
_LINE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
ALERT = "#D55E00"
ENV = "#7E6B9A"
MUTED = "#777777"
FONT = 8
TEXT = "#333333"
TICK_LENGTH = 3  # points
TITLE_FONT = 9
SMALL_FONT = 7
PX_PER_PT = DPI / 72
LIGHT = 0.6  # opacity of lines without emphasis


def line_colour(i: int) -> str:
    return _LINE_COLOURS[i % len(_LINE_COLOURS)]


def tint(colour: str, alpha: float) -> str:
    """`colour` at opacity `alpha` over white, as an opaque colour."""
    rgb = [int(colour[k:k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(c * alpha + 255 * (1 - alpha)):02x}" for c in rgb)
