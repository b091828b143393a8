"""slo_breach: a model whose recent runs are past its SLO gets one alert per breach episode.

The naive rule ("the mean of the last 5 runs is above 50 ms: optimise") fires on every run while the
breach lasts, on any window with too few runs, and on one reading taken while the host was busy.
Here the statistic reads only good runs (successful, not contended), needs all `last` of them, is the
median by default (one stray reading cannot move it), and the decision's key names the breach
episode, so a long breach gives one decision and a new breach after a recovery gives another.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from monitor.core.metrics import SLO_MAX_METRICS, SLO_MIN_METRICS
from monitor.core.runs import FLAG_CONTENDED, RunRecord
from rules.api import Decision, Rule, RuleContext, RuleParams
from rules.builtin.common import ActionList, figure, one_of, unit

# How far back to read when a breach is older than the runs in the context (its start names it).
MAX_LOOKBACK_RUNS = 5000


class SloBreachParams(RuleParams):
    last: int = Field(default=5, ge=1, le=1000, description="newest good runs the statistic reads; all are needed")
    statistic: Literal["mean", "median"] = Field(
        default="median", description="median (one bad reading cannot move it) or mean")
    metrics: Annotated[list[str], AfterValidator(one_of(SLO_MAX_METRICS + SLO_MIN_METRICS, "SLO metric"))] | None = (
        Field(default=None, description="only these SLO metrics (default: every SLO of the model)"))
    actions: ActionList = Field(default=["alert"], description="what to ask for")


@dataclass(frozen=True, slots=True)
class Breach:
    """The current breach of one SLO at one batch size."""

    value: float  # the statistic over the newest window
    window: list[int]  # its runs, newest first
    since_run_id: int  # the first run past the bound of the episode's first breaching window


class SloBreach(Rule):
    """Why: an SLO is a promise to the service's callers, so it is judged on the numbers as measured,
    not on detection's notion of change; but on enough good runs, and once per episode."""

    name = "slo_breach"
    description = "alert when the median (or mean) of the last runs is past the model's SLO"
    Params = SloBreachParams
    params: SloBreachParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        p = self.params
        decisions: list[Decision] = []
        for metric, bound in context.model.slo.items():
            if p.metrics is not None and metric not in p.metrics:
                continue
            upper = metric not in SLO_MIN_METRICS
            for batch in context.model.series_batch_sizes:
                breach = self._breach(context, metric, batch, bound, upper)
                if breach is None:
                    continue
                side = "above" if upper else "below"
                reason = (
                    f"{metric} of {context.model.name} b{batch}: {p.statistic} of the last {p.last} runs "
                    f"{figure(breach.value)}{unit(metric)} is {side} the SLO of {figure(bound)}{unit(metric)} "
                    f"(breaching since run {breach.since_run_id})"
                )
                details = {"metric": metric, "batch_size": batch, "bound": bound, "statistic": p.statistic,
                           "value": breach.value, "runs": breach.window, "since_run_id": breach.since_run_id}
                key = f"slo:{metric}:b{batch}:{breach.since_run_id}"
                decisions += [Decision(action, reason, key=key, details=details) for action in p.actions]
        return decisions

    def _breach(self, context: RuleContext, metric: str, batch: int, bound: float, upper: bool) -> Breach | None:
        """The current breach, reading further back while it reaches the oldest run read."""
        p = self.params
        stat: Callable[[list[float]], float] = statistics.median if p.statistic == "median" else statistics.fmean
        past: Callable[[float], bool] = (lambda v: v > bound) if upper else (lambda v: v < bound)
        runs, limit = list(context.runs), None
        while True:
            series = _good_series(runs, context.active_variant, batch, metric)
            found = _episode(series, p.last, stat, past)
            if found is None:
                return None
            start, value = found
            exhausted = limit is not None and len(runs) < limit
            if start > p.last - 1 or exhausted or (limit or 0) >= MAX_LOOKBACK_RUNS:
                break
            limit = min(MAX_LOOKBACK_RUNS, max(200, 4 * (limit or len(runs))))
            runs = list(context.history(limit, batch))
        window = [run_id for run_id, _ in reversed(series[-p.last:])]
        first = next(i for i in range(start - p.last + 1, start + 1) if past(series[i][1]))
        return Breach(value, window, series[first][0])


def _good_series(runs: Sequence[RunRecord], variant: str, batch: int, metric: str) -> list[tuple[int, float]]:
    """(run id, value) of the runs the statistic may read, oldest first."""
    series = []
    for run in runs:
        value = getattr(run.metrics, metric)
        if (run.status == "ok" and run.variant == variant and run.batch_size == batch
                and FLAG_CONTENDED not in run.flags and value is not None and run.run_id is not None):
            series.append((run.run_id, float(value)))
    series.reverse()
    return series


def _episode(
    series: list[tuple[int, float]], last: int, stat: Callable[[list[float]], float], past: Callable[[float], bool]
) -> tuple[int, float] | None:
    """When the newest window breaches: (index of the end of the episode's first breaching window,
    the newest window's statistic); None otherwise.

    The episode's windows are those ending at each run from that index on; the index depends only on
    runs already read, so it stays put, and the episode keeps its key, while the breach lasts.
    """
    values = [v for _, v in series]
    if len(values) < last:
        return None
    newest = stat(values[-last:])
    if not past(newest):
        return None
    end = len(values) - 1
    while end - 1 >= last - 1 and past(stat(values[end - last : end])):
        end -= 1
    return end, newest
