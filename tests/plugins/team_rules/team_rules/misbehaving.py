"""Rules that misbehave on purpose, so that perfguard's tests can show the others still run."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

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


class BusyLoopsParams(RuleParams):
    pid_file: str | None = Field(default=None, description="where to write the process id before spinning")


class BusyLoops(Rule):
    name = "busy_loops"
    description = "spins on a core forever (a plugin stuck in a loop)"
    Params = BusyLoopsParams
    params: BusyLoopsParams

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        if self.params.pid_file:
            Path(self.params.pid_file).write_text(str(os.getpid()))
        while True:
            pass


class Exits(Rule):
    name = "exits"
    description = "ends its process on the spot (os._exit: no exception, no cleanup)"

    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        os._exit(3)
