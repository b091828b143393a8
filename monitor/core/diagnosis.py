"""Where a model's time went, as a finding or an action keeps it: the profile diff that
monitor/optimize/diagnosis.py makes of the current model against its frozen reference.

Stored as JSON (findings.diagnosis, actions.diagnosis) and printed by the CLI and the reports; rules
read it as the context's `profile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitor.core.values import Value


@dataclass(frozen=True, slots=True)
class OpTime(Value):
    """One of the busiest operators of the current model: its self time and share of the total."""

    op: str
    self_us: float
    share: float


@dataclass(frozen=True, slots=True)
class GrownOp(Value):
    """An operator whose self time grew against the reference (or is new), with the input shapes it
    now runs on that the reference never did."""

    op: str
    family: str
    before_us: float
    after_us: float
    change: float | None  # relative; None for a new operator
    new: bool
    new_shapes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Diagnosis(Value):
    """The profile diff. Without a reference only the current profile's part is filled (busiest
    operators, family shares); `error` says why no profile could be taken, when none could."""

    total_us: float | None = None
    families: dict[str, float] = field(default_factory=dict)  # operator family -> share of the time
    top: list[OpTime] = field(default_factory=list)
    summary: str | None = None
    # Against the reference:
    reference_total_us: float | None = None
    total_change: float | None = None
    grown: list[GrownOp] | None = None
    grew_most: str | None = None  # the family whose time grew most
    # Where it was taken:
    series: str | None = None
    reference_kind: str | None = None
    note: str | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Diagnosis:
        grown = data.get("grown")
        return cls(
            total_us=data.get("total_us"),
            families=dict(data.get("families") or {}),
            top=[OpTime(**t) for t in data.get("top") or []],
            summary=data.get("summary"),
            reference_total_us=data.get("reference_total_us"),
            total_change=data.get("total_change"),
            grown=None if grown is None else [GrownOp(**g) for g in grown],
            grew_most=data.get("grew_most"),
            series=data.get("series"),
            reference_kind=data.get("reference_kind"),
            note=data.get("note"),
            error=data.get("error"),
        )
