"""An optimisation action as every layer passes it: the decision, its candidates' numbers, and the
variant it promotes. Storage records it, the optimiser makes it, rules, reports and the CLI read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.core.diagnosis import Diagnosis
from monitor.core.values import Value


@dataclass(frozen=True, slots=True)
class Fidelity(Value):
    """How closely a candidate's outputs follow the current variant's on the same inputs
    (harness/candidates.py): "top1" agreement of the arg-max for classifiers, else the
    "relative_error" (`value`). `non_finite` when the output held NaN or infinity."""

    kind: str  # top1 | relative_error
    agreement: float | None = None
    value: float | None = None
    relative_error: float | None = None  # top1's companion figure
    rows: int | None = None
    non_finite: bool | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fidelity:
        return cls(kind=data["kind"], agreement=data.get("agreement"), value=data.get("value"),
                   relative_error=data.get("relative_error"), rows=data.get("rows"), non_finite=data.get("non_finite"))


@dataclass(frozen=True, slots=True)
class CandidateNumbers(Value):
    """What was measured of one candidate beside the current variant."""

    label: str
    recipe: str
    ratio_p50: float | None = None
    ratio_ci95: tuple[float, float] | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    current_p50_ms: float | None = None
    current_p99_ms: float | None = None
    size_mb: float | None = None
    current_size_mb: float | None = None
    forward_peak_mb: float | None = None  # memory one call takes beyond the loaded model
    current_forward_peak_mb: float | None = None
    accuracy: float | None = None
    current_accuracy: float | None = None
    fidelity: Fidelity | None = None
    error: str | None = None
    variant: dict[str, Any] | None = None  # the VariantSpec that rebuilds it, as JSON
    build_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float | None:
        return 1.0 / self.ratio_p50 if self.ratio_p50 else None


@dataclass(frozen=True, slots=True)
class Verdict(Value):
    """A candidate's decision with every reason it was refused (empty when accepted). Its JSON form
    is flat: the numbers, the speed-up, `accepted` and `reasons`."""

    numbers: CandidateNumbers
    accepted: bool
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self.numbers, f.name) for f in dataclasses.fields(CandidateNumbers)}
        data["fidelity"] = None if self.numbers.fidelity is None else self.numbers.fidelity.to_dict()
        data["ratio_ci95"] = None if self.numbers.ratio_ci95 is None else list(self.numbers.ratio_ci95)
        data.update(speedup=self.numbers.speedup, accepted=self.accepted, reasons=list(self.reasons))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        names = {f.name for f in dataclasses.fields(CandidateNumbers)}
        fields = {k: v for k, v in data.items() if k in names}
        if fields.get("fidelity") is not None:
            fields["fidelity"] = Fidelity.from_dict(fields["fidelity"])
        if fields.get("ratio_ci95") is not None:
            low, high = fields["ratio_ci95"]
            fields["ratio_ci95"] = (low, high)
        return cls(CandidateNumbers(**fields), bool(data.get("accepted")), list(data.get("reasons") or []))


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One optimisation decision as stored and printed (`perfguard optimize --json` emits `to_json()`)."""

    model: str
    kind: str  # requantize | prune | distill | rollback | amp (training-step advice: nothing is promoted)
    trigger: str
    status: str  # accepted | rejected | dry_run | failed | advised (an amp candidate worth switching to)
    reason: str
    from_variant: str
    to_variant: str | None = None
    finding_id: int | None = None
    candidates: list[Verdict] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    created_at: datetime | None = None
    rolled_back_at: datetime | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["candidates"] = [c.to_dict() for c in self.candidates]
        data["diagnosis"] = self.diagnosis.to_dict() if self.diagnosis is not None else None
        for name in ("created_at", "rolled_back_at"):
            data[name] = data[name].isoformat() if data[name] is not None else None
        return data


@dataclass(frozen=True, slots=True)
class Promotion:
    """A new variant to add and activate with an accepted action."""

    name: str
    kind: str  # the action that made it: requantize | prune | distill
    spec: dict[str, Any]  # a VariantSpec as a dict
    numbers: dict[str, Any]  # what justified it: the chosen candidate's verdict as JSON
