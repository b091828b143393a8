"""p99_guard: alert when a model's tail latency runs away from its median.

Detection watches p50 and p99 each on its own; a service that promises its p99 also cares about
their ratio. A p99 drifting away from a steady p50 (a lock, a GC pause, an allocator falling back
to mmap) hurts callers while the median looks fine.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from rules.api import Decision, Rule, RuleContext, RuleParams


class P99GuardParams(RuleParams):
    max_ratio: float = Field(default=3.0, gt=1, description="largest p99/p50 ratio tolerated")
    runs: int = Field(default=3, ge=1, description="newest good runs that must all be past it")


class P99Guard(Rule):
    """Alerts when the newest `runs` good runs of a batch size all have p99 > max_ratio x p50."""

    name = "p99_guard"  # must equal the entry point name
    description = "alert when p99 latency runs away from p50 (tail latency)"
    Params = P99GuardParams
    params: P99GuardParams  # the validated params, built from the config's `params = {...}`

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        decisions = []
        for batch in context.model.series_batch_sizes:
            streak = []  # (run id, ratio) of the newest runs past the ratio, newest first
            for run in context.ok_runs(batch):
                p50, p99 = run.metrics.latency_ms_p50, run.metrics.latency_ms_p99
                if "contended" in run.flags or not p50 or not p99:
                    continue  # a busy host's reading says nothing about the model
                if p99 / p50 <= self.params.max_ratio:
                    break
                streak.append((run.run_id, p99 / p50))
            if len(streak) < self.params.runs:
                continue
            since, ratio = streak[-1][0], streak[0][1]
            decisions.append(Decision(
                "alert",
                f"p99 of {context.model.name} b{batch} is {ratio:.1f}x its p50 in the last {len(streak)} "
                f"runs (limit {self.params.max_ratio:g}x), since run {since}",
                # The key names the episode: one alert while it lasts, another after a recovery.
                key=f"p99_guard:b{batch}:{since}",
                details={"batch_size": batch, "ratio": ratio, "since_run_id": since},
            ))
        return decisions
