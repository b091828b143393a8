"""memory_growth: peak memory (host RSS or CUDA) that grew for good gets an alert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import AfterValidator, Field

from rules.api import Decision, Rule, RuleContext, RuleParams
from rules.builtin.common import ActionList, finding_decisions, one_of, open_regressions

MEMORY_METRICS = ("peak_rss_mb", "cuda_peak_mem_mb")


class MemoryGrowthParams(RuleParams):
    metrics: Annotated[list[str], AfterValidator(one_of(MEMORY_METRICS, "memory metric"))] = Field(
        default=list(MEMORY_METRICS), min_length=1, description="memory metrics whose growth counts")
    min_change: float = Field(default=0.10, gt=0, description="smallest relative growth acted on (0.10 = 10 %)")
    actions: ActionList = Field(default=["alert"], description="what to ask for")


class MemoryGrowth(Rule):
    """Why: memory rarely costs latency until the host runs out, and then it costs the service; a
    lasting step of 10 % is worth a person's look long before that (a leak, a larger buffer)."""

    name = "memory_growth"
    description = "alert when peak memory (RSS or CUDA) grows"
    Params = MemoryGrowthParams
    params: MemoryGrowthParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        found = open_regressions(context, self.params.metrics, min_change=self.params.min_change)
        return [d for f in found for d in finding_decisions(context, f, self.params.actions)]
