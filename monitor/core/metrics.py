"""Which stored metrics are watched for changes, and which way is worse for each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class WatchedMetric:
    """A run metric as a series: `worse` is the direction of a regression; the other is an improvement."""

    name: str
    worse: Literal["up", "down"]
    min_effect: float  # default smallest relative change worth a finding
    sample_quantile: float | None = None  # the quantile of the raw per-iteration samples it summarises
    # The default for the relative reading (the model against its frozen reference in the same
    # rounds), which drift cannot move, so a smaller change is still a real one; None: not read so.
    relative_min_effect: float | None = None


WATCHED: dict[str, WatchedMetric] = {
    m.name: m
    for m in (
        WatchedMetric("latency_ms_p50", "up", 0.05, sample_quantile=0.5, relative_min_effect=0.04),
        WatchedMetric("latency_ms_p99", "up", 0.10, sample_quantile=0.99, relative_min_effect=0.05),
        WatchedMetric("throughput_per_s", "down", 0.05, relative_min_effect=0.04),
        WatchedMetric("peak_rss_mb", "up", 0.05),
        WatchedMetric("cuda_peak_mem_mb", "up", 0.05),
        WatchedMetric("model_size_mb", "up", 0.01),
        WatchedMetric("accuracy", "down", 0.005),
        WatchedMetric("energy_j_per_inference", "up", 0.05),
    )
}

# Every latency figure a run stores, and those of them detection watches.
LATENCY_METRICS = ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean")
WATCHED_LATENCY = tuple(name for name in WATCHED if name in LATENCY_METRICS)
# What a relative reading (the model against its frozen reference) speaks for: latency, and
# throughput (the batch over the latency); a memory or accuracy figure is the model's alone.
RELATIVE_METRICS = tuple(m.name for m in WATCHED.values() if m.relative_min_effect is not None)


def verdict(metric: str, change: Literal["up", "down"]) -> Literal["regression", "improvement"]:
    """A change of `metric` in direction `change`, judged."""
    return "regression" if WATCHED[metric].worse == change else "improvement"


# What an SLO may bound, by stored metric: from above (a latency, memory, power), or from below
# ("higher is better").
SLO_MAX_METRICS = (
    "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "peak_rss_mb",
    "cuda_peak_mem_mb", "model_size_mb", "gpu_power_w", "energy_j_per_inference",
)
SLO_MIN_METRICS = ("throughput_per_s", "accuracy")
