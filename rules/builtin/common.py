"""What the finding-driven built-in rules share: which findings they act on, and how they say why.

Detection has already judged each finding (significance, minimum effect, raw samples), so these
rules only choose which of them deserve an action and word the reason; one helper does the choosing
so that six rules cannot drift apart in what "an open regression past a threshold" means.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from monitor.core.series import FindingRecord
from rules.api import ActionKind, Decision, RuleContext


def _distinct(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("values must not repeat")
    return values


# What a rule asks for when it fires; alert only by default, because an optimisation is a hypothesis.
ActionList = Annotated[list[ActionKind], Field(min_length=1), AfterValidator(_distinct)]


def one_of(allowed: Iterable[str], what: str) -> Callable[[list[str]], list[str]]:
    """A validator for a list param whose items must be among `allowed`, with a did-you-mean hint."""
    choices = tuple(allowed)

    def check(values: list[str]) -> list[str]:
        for value in values:
            if value not in choices:
                hint = difflib.get_close_matches(value, choices, n=1)
                detail = f"did you mean {hint[0]!r}?" if hint else f"expected one of: {', '.join(choices)}"
                raise ValueError(f"unknown {what} {value!r}; {detail}")
        return _distinct(values)

    return check


def open_regressions(
    context: RuleContext, metrics: Iterable[str], *, min_change: float = 0.0, min_drop: float | None = None
) -> list[FindingRecord]:
    """The model's open regression findings of `metrics` past a threshold, biggest change first.

    The threshold is relative (`min_change`, on |rel_change|), or absolute on the drop of the median
    when `min_drop` is given (accuracy: one point lost matters the same at 0.60 as at 0.98).
    """
    wanted = set(metrics)
    found = []
    for finding in context.findings:
        if finding.state != "open" or finding.verdict != "regression" or finding.metric not in wanted:
            continue
        if min_drop is not None:
            if finding.before.median - finding.after.median < min_drop:
                continue
        elif abs(finding.rel_change) < min_change:
            continue
        found.append(finding)
    return sorted(found, key=lambda f: abs(f.rel_change), reverse=True)


def finding_decisions(
    context: RuleContext, finding: FindingRecord, actions: Sequence[ActionKind], *,
    recipes: Sequence[str] = (), note: str = "",
) -> list[Decision]:
    """One decision per action, all answering the finding (so the engine acts on it once). A training
    step's finding is alerted on only: re-quantizing or pruning the served model cannot answer it."""
    if finding.key.mode == "train":
        actions = [a for a in actions if a == "alert"]
    reason = describe(context, finding) + note
    details = {
        "metric": finding.metric,
        "series": finding.key.label(),
        "rel_change": finding.rel_change,
        "before": finding.before.median,
        "after": finding.after.median,
        "change_run_id": finding.change_run_id,
        "cause": finding.cause,
    }
    return [
        Decision(action, reason, key=f"finding:{finding.id}", finding_id=finding.id,
                 recipes=tuple(recipes) if action != "alert" else (), details=details)
        for action in actions
    ]


def describe(context: RuleContext, finding: FindingRecord) -> str:
    """'latency_ms_p50 of mlp baseline/cpu/b32 rose 85 % (1.02 -> 1.89 ms) since run 41; cause model'."""
    verb = "rose" if finding.change == "up" else "fell"
    before, after = finding.before.median, finding.after.median
    levels = f"{figure(before)} -> {figure(after)}{unit(finding.metric)}"
    if finding.drift is not None:  # a creep: how far so far, and how fast
        verb = f"has crept {'up' if finding.change == 'up' else 'down'}"
        levels = f"{percent(finding.drift.slope_per_run)} a run, {levels}"
    text = (
        f"{finding.metric} of {context.model.name} {finding.key.label()} {verb} "
        f"{percent(finding.rel_change)} ({levels}) since run {finding.change_run_id}"
    )
    return text + (f"; cause {finding.cause}" if finding.cause else "")


def percent(rel: float) -> str:
    value = abs(rel) * 100
    return f"{value:.0f} %" if value >= 10 else f"{value:.1f} %"


def figure(value: float | None) -> str:
    """A measured value, readable: 3 significant digits, no exponent for large throughputs."""
    if value is None:
        return "?"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def unit(metric: str) -> str:
    """The unit of a stored metric, with its leading space ('' for accuracy)."""
    if metric.startswith("latency_ms"):
        return " ms"
    if metric.endswith("_mb"):
        return " MB"
    if metric.endswith("_per_s"):
        return "/s"
    if metric.startswith("energy_j"):
        return " J"
    if metric.endswith("_w"):
        return " W"
    return ""
