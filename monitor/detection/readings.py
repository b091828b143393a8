"""Which series detection reads for each metric, and what a change in each one means.

A measured latency is the product of three things: the model, its environment (torch, threads, a math
library's code path) and the host (other tenants, clocks, the state of its memory). On a shared host
the last one moves by 10-60 % within minutes, so the absolute series alone cannot tell a +7 % model
regression from a slow afternoon. A scheduled run therefore times the model and its frozen reference
in the same rounds, and the host-speed probe beside them (monitor/harness/host_probe.py); detection
reads each factor from the series that isolates it:

- `relative`: the model over its frozen reference, per round (`rel_to_reference`), scaled to ms at the
  reference's speed when it was frozen. Host drift and the environment hit both and cancel, so a
  change is the model's (cause `model`); where the environment changed at that very run, the model
  and its copy reacted differently to it (cause `environment`). Latency p50, p99 and throughput.
- `reference`: the frozen reference's own p50 over the BLAS probe: the environment's share. A change
  with an environment diff is cause `environment`; without one the host moved (a host event, never a
  model finding), unless the reference is a state dict, which takes its code from the factory and so
  cannot clear the model's code (cause `unknown`).
- `normalised`: the live model's latency over the probe, for a series whose reference was lost (it
  no longer loads or reproduces its output) until a new baseline is accepted.
- `absolute`: as measured: series without a reference yet (or with relative measurement off), and
  every metric a reference cannot speak for (memory, size, accuracy, energy). Once a series is timed
  against a reference, its absolute latency still speaks for the changes before that (a finding of
  those days stays as it was), and no longer for later ones, which the relative readings explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from monitor.core.metrics import RELATIVE_METRICS, WATCHED
from monitor.core.series import ReferenceInfo, SeriesRun
from monitor.detection.series import SeriesView, figures

ReadingName = Literal["absolute", "relative", "reference", "normalised"]
HOST = "host"  # a change that is the host's: recorded as a host event, not a finding
ANCHOR_RUNS = 5  # runs whose figures scale a reading when its reference recorded none at freeze time


@dataclass(frozen=True, slots=True)
class Reading:
    """One series detection reads: a metric's values over some of a series' usable runs."""

    name: ReadingName
    metric: str
    runs: list[SeriesRun]
    values: np.ndarray
    changes_before: datetime | None = None  # only changes that began before this count (see above)

    def counts(self, index: int) -> bool:
        """Whether a change beginning at run `index` is this reading's to report."""
        return self.changes_before is None or self.runs[index].started_at < self.changes_before

    def cause(self, env_diff: dict[str, object] | None, reference: ReferenceInfo | None) -> str | None:
        """What a change in this reading means (None: not known from the reading; HOST: no finding)."""
        if self.name == "relative":
            return "environment" if env_diff else "model"
        if self.name == "reference":
            if env_diff:
                return "environment"
            kind = (reference.artifact if reference is not None else {}).get("kind")
            return "unknown" if kind == "state_dict" else HOST
        return None


def series_readings(view: SeriesView, reference: ReferenceInfo | None) -> list[Reading]:
    """Every reading of one series: the latency readings its measurements allow, then the rest."""
    readings = latency_readings(view, reference)
    readings += [
        Reading("absolute", metric, view.usable, view.values(metric))
        for metric in WATCHED if metric not in RELATIVE_METRICS
    ]
    return readings


def latency_readings(view: SeriesView, reference: ReferenceInfo | None) -> list[Reading]:
    """The relative readings when the series is timed against a usable reference; normalised ones
    when its reference was lost; else the absolute latency as measured."""
    batch = view.key.batch_size
    if reference is not None and reference.artifact and reference.lost_at is None:
        # Runs flagged contended too: their ratio comes from their clean rounds only, and interference
        # slows both subjects of a round alike. Leaving them out (as the absolute reading must) only
        # thins the series: on a busy host, 6 of 14 runs before a change, too few to place it.
        runs = [r for r in view.current if r.status == "ok" and r.reference_id == reference.id
                and r.metrics.get("rel_to_reference")]
        if runs:
            p50 = figures(runs, "rel_to_reference") * _anchor(reference, runs, "reference_p50_ms")
            p99 = figures(runs, "rel_p99_to_reference") * _anchor(reference, runs, "reference_p99_ms")
            ref_norm = figures(runs, "reference_p50_ms") / figures(runs, "probe_blas_ms")
            before = runs[0].started_at
            return [
                *(Reading("absolute", metric, view.usable, view.values(metric), changes_before=before)
                  for metric in RELATIVE_METRICS),
                Reading("relative", "latency_ms_p50", runs, p50),
                Reading("relative", "latency_ms_p99", runs, p99),
                Reading("relative", "throughput_per_s", runs, batch * 1000.0 / p50),
                Reading("reference", "latency_ms_p50", runs,
                        ref_norm * _anchor(reference, runs, "probe_blas_ms")),
            ]
    if reference is not None and reference.lost_at is not None:
        runs = [r for r in view.usable if r.metrics.get("probe_blas_ms")]
        if runs:
            scale = figures(runs, "probe_blas_ms")[0] / figures(runs, "probe_blas_ms")
            p50 = figures(runs, "latency_ms_p50") * scale
            return [
                Reading("normalised", "latency_ms_p50", runs, p50),
                Reading("normalised", "latency_ms_p99", runs, figures(runs, "latency_ms_p99") * scale),
                Reading("normalised", "throughput_per_s", runs, batch * 1000.0 / p50),
            ]
    return [Reading("absolute", metric, view.usable, view.values(metric)) for metric in RELATIVE_METRICS]


def _anchor(reference: ReferenceInfo, runs: list[SeriesRun], figure: str) -> float:
    """The scale of a reading: the figure as measured when the reference was frozen, else the median
    of its first runs. Only a scale: changes are relative, so it moves no finding's size."""
    frozen = reference.measured.get(figure)
    if frozen:
        return float(frozen)
    first = figures(runs[:ANCHOR_RUNS], figure)
    first = first[np.isfinite(first)]
    return float(np.median(first)) if first.size else float("nan")
