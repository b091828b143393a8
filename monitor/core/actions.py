"""An optimisation action as every layer passes it: the decision, its candidates' numbers, and the
variant it promotes. Storage records it, the optimiser makes it, rules, reports and the CLI read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One optimisation decision as stored and printed (`perfguard optimize --json` emits `to_json()`)."""

    model: str
    kind: str  # requantize | prune | rollback
    trigger: str
    status: str  # accepted | rejected | dry_run | failed
    reason: str
    from_variant: str
    to_variant: str | None = None
    finding_id: int | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    diagnosis: dict[str, Any] | None = None
    created_at: datetime | None = None
    rolled_back_at: datetime | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("created_at", "rolled_back_at"):
            data[name] = data[name].isoformat() if data[name] is not None else None
        return data


@dataclass(frozen=True, slots=True)
class Promotion:
    """A new variant to add and activate with an accepted action."""

    name: str
    kind: str  # the action that made it: requantize | prune
    spec: dict[str, Any]  # a VariantSpec as a dict
    numbers: dict[str, Any]  # what justified it
