"""The rule plugin contract: `Rule`, the read-only `RuleContext` it is given, the `Decision`s it returns.

A rule is a small class in any installed package, registered under the entry point group
`perfguard.rules`. perfguard builds it once per `[[rules]]` entry with its validated `Params`, then
calls `evaluate(context)` after a model's runs have been stored and checked. The rule reads the
context and returns what should happen, each with a reason a person can read: an alert, a
re-quantization, a pruning, or nothing (an empty list). perfguard does the rest: cooldown and
hysteresis (one action per `Decision.key`), the time limit, recording every decision, and running
the optimisation actions, which keep a candidate only if the harness proves it better.

Everything here is plain data: a rule cannot reach the database or the scheduler, so a bug in one
cannot corrupt history or stop the service. Importing this module loads no database, no config and no
torch: a rule sees a model as a `ModelView`, which stays the same when the config file changes shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from monitor.core.diagnosis import Diagnosis
from monitor.core.runs import RunRecord
from monitor.core.series import FindingRecord

ActionKind = Literal["alert", "requantize", "prune", "distill"]
ACTIONS: tuple[ActionKind, ...] = ("alert", "requantize", "prune", "distill")
ENTRY_POINT_GROUP = "perfguard.rules"


class RuleParams(BaseModel):
    """Base of a rule's parameters: strict, unknown keys refused, so a typo in the config is an error.

    `[[rules]].params` is validated as JSON would be (it comes from TOML text): an array may fill a
    tuple and a string an enum, but `true` is not a number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a rule wants done for one model, and why.

    `key` says which event the decision answers (a finding, an SLO breach episode): the engine acts
    on a key once, so one regression gives one action however many runs still show it. Without a key,
    only the rule's cooldown limits repeats. `recipes` narrows the candidates of requantize/prune
    (names from `perfguard optimize --list`); empty lets perfguard choose by device and diagnosis.
    """

    action: ActionKind
    reason: str
    key: str | None = None
    finding_id: int | None = None
    recipes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; expected one of {', '.join(ACTIONS)}")
        if not self.reason.strip():
            raise ValueError("a decision needs a reason")


@dataclass(frozen=True, slots=True)
class ModelView:
    """What a rule sees of a model: its name, device, batch sizes (one series each), owners, SLOs
    (metric -> bound, as in the config) and tags."""

    name: str
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = ()
    owners: tuple[str, ...] = ()
    slo: Mapping[str, float] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @property
    def series_batch_sizes(self) -> tuple[int, ...]:
        """`batch_sizes` under the name rules written against the config's model know."""
        return self.batch_sizes

    def __getattr__(self, name: str) -> Any:
        # Only for names the view lacks: a rule written against the whole config gets this, not a bare
        # AttributeError, as its recorded error.
        raise AttributeError(f"RuleContext.model has no {name!r}: a rule sees a model's name, device, batch_sizes, "
                             f"owners, slo and tags (rules.api.ModelView)")


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a rule may read about one model, at one moment. Read-only; built fresh for each call.

    - `model`: the model as rules see it (`ModelView`: name, device, batch sizes, owners, SLOs, tags).
    - `runs`: recent stored inference runs (one call at a time) of the active variant, all batch sizes,
      newest first (failed ones too).
    - `findings`: the model's open findings from detection (all series: `finding.key.mode` tells an
      inference series from a training-step ("train") or concurrent-load ("load") one).
    - `new_findings`: ids of the findings this check opened (a subset of `findings`).
    - `active_variant`: the variant being benchmarked and served.
    - `profile`: the newest diagnosis (profile diff: `Diagnosis`) of the model, if one was taken.
    - `now`: the time of this evaluation (aware, UTC); use it rather than the clock.
    - `history(limit, batch_size)`: older inference runs of the model, newest first, read on demand.
    """

    model: ModelView
    runs: Sequence[RunRecord]
    findings: Sequence[FindingRecord]
    active_variant: str
    now: datetime
    new_findings: frozenset[int] = frozenset()
    profile: Diagnosis | None = None
    history: Callable[[int, int | None], Sequence[RunRecord]] = lambda limit, batch_size: ()

    def ok_runs(self, batch_size: int | None = None) -> list[RunRecord]:
        """The successful runs, newest first, optionally of one batch size."""
        return [r for r in self.runs if r.status == "ok" and (batch_size is None or r.batch_size == batch_size)]


class Rule(ABC):
    """A rule: a name, a description, a `Params` schema, and `evaluate`.

    Subclasses set `name` (unique; the entry point name should match), `description` (one line,
    shown by `perfguard rules`) and `Params` (a `RuleParams` subclass with defaults). The instance is
    built once per configured entry and may be called from another thread than the one that built
    it; keep no state between calls (the engine keeps what must be remembered).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[RuleParams]] = RuleParams

    def __init__(self, params: RuleParams):
        self.params = params

    @abstractmethod
    def evaluate(self, context: RuleContext) -> Sequence[Decision]:
        """Called after each check of a model's runs; return the decisions (empty: nothing to do)."""
