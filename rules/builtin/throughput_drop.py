"""throughput_drop: fewer items per second, for good, gets an alert."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from rules.api import Decision, Rule, RuleContext, RuleParams
from rules.builtin.common import ActionList, finding_decisions, open_regressions


class ThroughputDropParams(RuleParams):
    min_change: float = Field(default=0.05, gt=0, description="smallest relative drop acted on (0.05 = 5 %)")
    actions: ActionList = Field(default=["alert"], description="what to ask for")


class ThroughputDrop(Rule):
    """Why: throughput is what a batch service is sized by; a drop means more hosts for the same
    traffic even when each call's latency still looks acceptable."""

    name = "throughput_drop"
    description = "alert when throughput (items/s) drops"
    Params = ThroughputDropParams
    params: ThroughputDropParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        found = open_regressions(context, ["throughput_per_s"], min_change=self.params.min_change)
        return [d for f in found for d in finding_decisions(context, f, self.params.actions)]
