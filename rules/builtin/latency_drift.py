"""latency_drift: a latency regression found by detection gets one alert and one re-quantization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import AfterValidator, Field

from monitor.core.catalog import RECIPES
from monitor.core.metrics import WATCHED_LATENCY
from rules.api import Decision, Rule, RuleContext, RuleParams
from rules.builtin.common import ActionList, finding_decisions, one_of, open_regressions


class LatencyDriftParams(RuleParams):
    metrics: Annotated[list[str], AfterValidator(one_of(WATCHED_LATENCY, "latency metric"))] = Field(
        default=list(WATCHED_LATENCY), min_length=1, description="latency metrics whose regressions count")
    min_change: float = Field(default=0.05, gt=0, description="smallest relative rise acted on (0.05 = 5 %)")
    actions: ActionList = Field(default=["alert", "requantize"], description="what to ask for")
    act_on_environment: bool = Field(
        default=False, description="also optimise when attribution blames the environment, not the model")
    recipes: Annotated[list[str], AfterValidator(one_of(RECIPES, "recipe"))] = Field(
        default=[], description="recipes to try (default: perfguard picks by device and diagnosis)")


class LatencyDrift(Rule):
    """Why: detection has already proven the change (significance, minimum effect, raw samples); this
    rule turns it into action once per finding. When attribution blames the environment (a new torch,
    fewer threads), re-quantizing the model fixes nothing, so it only alerts unless told otherwise."""

    name = "latency_drift"
    description = "alert and re-quantize when a latency metric regresses"
    Params = LatencyDriftParams
    params: LatencyDriftParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        p = self.params
        decisions: list[Decision] = []
        for finding in open_regressions(context, p.metrics, min_change=p.min_change):
            actions, note = list(p.actions), ""
            if finding.cause == "environment" and not p.act_on_environment:
                actions = [a for a in actions if a == "alert"]
                note = "; only alerting: re-quantizing the model cannot fix its environment"
            decisions += finding_decisions(context, finding, actions, recipes=p.recipes, note=note)
        return decisions
