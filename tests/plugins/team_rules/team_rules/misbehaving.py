"""Rules that misbehave on purpose, so that perfguard's tests can show the others still run."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import Field

from rules.api import Decision, Rule, RuleContext, RuleParams


class AlwaysRaises(Rule):
    name = "always_raises"
    description = "raises on every call (a buggy plugin)"

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        raise RuntimeError(f"bug in always_raises while looking at {context.model.name}")


class HangsParams(RuleParams):
    seconds: float = Field(default=3600.0, gt=0, description="how long each call blocks")


class Hangs(Rule):
    name = "hangs"
    description = "blocks for `seconds` on every call (a plugin waiting on a dead service)"
    Params = HangsParams
    params: HangsParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        time.sleep(self.params.seconds)
        return [Decision("alert", "finally answered")]
