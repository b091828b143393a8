"""accuracy_drop: a model that got less accurate gets an alert."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from rules.api import Decision, Rule, RuleContext, RuleParams
from rules.builtin.common import ActionList, finding_decisions, open_regressions


class AccuracyDropParams(RuleParams):
    min_drop: float = Field(
        default=0.01, gt=0, lt=1, description="smallest absolute drop of the median accuracy acted on (0.01 = 1 point)")
    actions: ActionList = Field(default=["alert"], description="what to ask for")


class AccuracyDrop(Rule):
    """Why: a faster model that answers worse is no win, and an accuracy drop usually means a changed
    model or data pipeline. Judged in absolute points, since one point matters as much at 0.6 as at 0.98."""

    name = "accuracy_drop"
    description = "alert when accuracy drops"
    Params = AccuracyDropParams
    params: AccuracyDropParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        found = open_regressions(context, ["accuracy"], min_drop=self.params.min_drop)
        return [d for f in found for d in finding_decisions(context, f, self.params.actions)]
