"""Where did the time go? Operator profiles of the current model against its frozen reference.

The worker profiles both (harness/profiling.py) in one job; this module compares them without
torch: the operators whose self time grew, the ones that are new, and the input shapes that appeared
with them (a widened layer shows as an `aten::addmm` on shapes the reference never ran). The share
of time per operator family (linear, conv, attention...) then orders the recipes worth trying:
int8 for Linear-heavy models, static int8 or channel pruning for conv-heavy ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from monitor.core.catalog import RecipeSpec
from monitor.core.diagnosis import Diagnosis, GrownOp, OpTime

# Operator families by name, torch's and ONNX Runtime's (`onnxruntime::Gemm`); the first match wins.
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("attention", "_native_multi_head", "softmax", "bmm")),
    ("conv", ("conv", "mkldnn_convolution", "max_pool", "avg_pool", "batch_norm", "maxpool", "averagepool",
              "batchnormalization")),
    ("linear", ("linear", "addmm", "aten::mm", "matmul", "quantized::linear", "lstm", "gemm")),
)
GROWN = 0.10  # an operator counts as grown past +10 % self time...
SIGNIFICANT = 0.02  # ...and only if the growth is at least 2 % of the reference's total time
MAX_LISTED = 8


def family(op: str) -> str:
    lowered = op.lower()
    for name, needles in FAMILIES:
        if any(needle in lowered for needle in needles):
            return name
    return "other"


def _by_op(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for row in rows:
        totals[row["op"]] += row["self_us"] + row.get("self_device_us", 0.0)
    return dict(totals)


def shares(by_op: dict[str, float]) -> dict[str, float]:
    """Share of the profiled time per operator family, from the time per operator."""
    per_family: dict[str, float] = defaultdict(float)
    for op, us in by_op.items():
        per_family[family(op)] += us
    total = sum(per_family.values()) or 1.0
    return {name: round(us / total, 4) for name, us in sorted(per_family.items(), key=lambda kv: -kv[1])}


def compare(current: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]] | None) -> Diagnosis:
    """The diagnosis: totals, grown and new operators with their new shapes, family shares.

    Without a reference (no frozen copy, or an optimisation asked for on demand), only the current
    profile's busiest operators and family shares are given.
    """
    now = _by_op(current)
    total_now = sum(now.values())
    top = [OpTime(op=op, self_us=round(us, 1), share=round(us / (total_now or 1.0), 4))
           for op, us in sorted(now.items(), key=lambda kv: -kv[1])[:MAX_LISTED]]
    busiest = Diagnosis(total_us=round(total_now, 1), families=shares(now), top=top)
    if reference is None:
        return replace(busiest, summary="busiest: " + ", ".join(f"{t.op} {100 * t.share:.0f} %" for t in top[:3]))
    then = _by_op(reference)
    total_then = sum(then.values()) or 1.0
    seen_shapes = {(r["op"], r["shapes"]) for r in reference}
    grown: list[GrownOp] = []
    for op, us in now.items():
        before = then.get(op, 0.0)
        if us - before < SIGNIFICANT * total_then:
            continue
        if before and us / before - 1.0 < GROWN:
            continue
        new_shapes = sorted(
            {r["shapes"] for r in current if r["op"] == op and (op, r["shapes"]) not in seen_shapes and r["shapes"]}
        )
        grown.append(GrownOp(
            op=op, family=family(op), before_us=round(before, 1), after_us=round(us, 1),
            change=None if not before else round(us / before - 1.0, 4), new=not before,
            new_shapes=new_shapes[:MAX_LISTED],
        ))
    grown.sort(key=lambda g: g.after_us - g.before_us, reverse=True)
    grown = grown[:MAX_LISTED]
    growth_by_family: dict[str, float] = defaultdict(float)
    for g in grown:
        growth_by_family[g.family] += g.after_us - g.before_us
    return replace(
        busiest,
        reference_total_us=round(total_then, 1),
        total_change=round(total_now / total_then - 1.0, 4),
        grown=grown,
        grew_most=max(growth_by_family, key=lambda k: growth_by_family[k]) if growth_by_family else None,
        summary=summary(grown) if grown else "no operator grew beyond the noise",
    )


def summary(grown: Sequence[GrownOp]) -> str:
    """One line: e.g. 'aten::addmm +85 % (new shapes [32,1024] [1024,1536]), aten::relu new'."""
    parts = []
    for g in grown[:3]:
        text = f"{g.op} new" if g.new or g.change is None else f"{g.op} {100 * g.change:+.0f} %"
        if g.new_shapes:
            text += f" (new shapes {g.new_shapes[0]})"
        parts.append(text)
    return ", ".join(parts)


def order_recipes(specs: Sequence[RecipeSpec], diagnosis: Diagnosis | None) -> list[RecipeSpec]:
    """The recipes worth trying first for where the time goes; those for a family the model barely
    uses (under 5 % of its time) are dropped, exact ones come after the ones that suit it."""
    if not diagnosis:
        return list(specs)
    share = diagnosis.families
    focus = diagnosis.grew_most or next(iter(share), None)

    def used(spec: RecipeSpec) -> bool:
        return not spec.suits or any(share.get(f, 0.0) >= 0.05 for f in spec.suits)

    def rank(spec: RecipeSpec) -> tuple[int, int, float]:
        fits = 0 if focus in spec.suits else 1 if not spec.suits else 2
        return (fits, int(spec.exact), -sum(share.get(f, 0.0) for f in spec.suits))

    return sorted((s for s in specs if used(s)), key=rank)
