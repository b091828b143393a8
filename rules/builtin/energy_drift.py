"""energy_drift: a GPU model that spends more energy per inference gets an alert."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from rules.api import Decision, Rule, RuleContext, RuleParams
from rules.builtin.common import ActionList, finding_decisions, open_regressions


class EnergyDriftParams(RuleParams):
    min_change: float = Field(default=0.10, gt=0, description="smallest relative rise acted on (0.10 = 10 %)")
    actions: ActionList = Field(default=["alert"], description="what to ask for")


class EnergyDrift(Rule):
    """Why: energy per inference is the running cost of a GPU fleet, and it can rise while latency
    holds (a lower clock, a less efficient kernel). Only GPUs report it (NVML's energy counter)."""

    name = "energy_drift"
    description = "alert when energy per inference rises (GPU models)"
    Params = EnergyDriftParams
    params: EnergyDriftParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        if not context.model.device.startswith("cuda"):
            return []
        found = open_regressions(context, ["energy_j_per_inference"], min_change=self.params.min_change)
        return [d for f in found for d in finding_decisions(context, f, self.params.actions)]
