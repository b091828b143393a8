"""Entry points that discovery must report without crashing: an import error, a non-rule, a shadow."""

from __future__ import annotations

from collections.abc import Sequence

from rules.api import Decision, Rule, RuleContext

NOT_A_RULE = 42


class Shadow(Rule):
    name = "latency_drift"
    description = "would replace the built-in latency_drift; the built-in must win"

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        return [Decision("prune", "the shadow ran")]
