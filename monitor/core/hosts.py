"""Host events as every layer passes them: the host itself got slower or faster (a probe figure,
or a model's frozen reference, moved), and the probe readings host detection reads. Storage keeps
them (storage/host_events.py), detection makes them (monitor/detection/host.py), reports show them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.core.series import Level


@dataclass(frozen=True, slots=True)
class HostEventRecord:
    """A host event as stored and shown: which signal moved, how much, since which run."""

    host: str
    signal: str  # a probe figure (probe_blas_ms, ...) or "<model> <series> reference"
    change: str  # up: slower | down: faster
    change_run_id: int
    change_at: datetime
    before: Level
    after: Level
    rel_change: float
    p_value: float
    state: str = "open"
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    resolved_at: datetime | None = None
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "host": self.host, "signal": self.signal, "change": self.change,
            "change_run_id": self.change_run_id, "change_at": self.change_at.isoformat(),
            "before": self.before.to_dict(), "after": self.after.to_dict(), "rel_change": self.rel_change,
            "p_value": self.p_value,
            "state": self.state, "first_seen": _iso(self.first_seen), "last_seen": _iso(self.last_seen),
            "resolved_at": _iso(self.resolved_at),
        }


@dataclass(frozen=True, slots=True)
class ProbeRun:
    """One run's host-speed probe figures and how busy the host was, as host detection reads them."""

    run_id: int
    started_at: datetime
    figures: dict[str, float | None]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
