"""What a chart shows, as plain data: its lines, markers and titles (`ChartSpec`), and the key
that names its PNG: a digest of everything drawn."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from reports.charts.style import STYLE_VERSION


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
            STYLE_VERSION,
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
        digest.update(timestamps(self.times).astype("<f8").tobytes())
        for line in self.lines:
            if line.times is not None:
                digest.update(b"own-times")
                digest.update(timestamps(line.times).astype("<f8").tobytes())
            digest.update(np.array(line.values, dtype="<f8").tobytes())
        return digest.hexdigest()[:16]


def timestamps(times: Sequence[datetime]) -> np.ndarray:
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
