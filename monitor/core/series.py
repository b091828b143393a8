"""Series and findings as every layer passes them: a series key, a run as detection reads it, a
finding, a frozen reference. Storage persists them, detection makes them, rules and reports read them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.core.diagnosis import Diagnosis
from monitor.core.values import Value


@dataclass(frozen=True, slots=True)
class SeriesState:
    """Where one checked series (one metric, one reading) stands now, for deciding whether a finding
    still holds."""

    current: float | None  # median of its newest runs
    min_effect: float

    def holds(self, before: float | None, change: str) -> bool:
        """Whether the level is still at least half the minimum effect away from `before`, that way."""
        if self.current is None or not before:
            return False
        rel = self.current / before - 1.0
        return abs(rel) >= self.min_effect / 2 and (rel > 0) == (change == "up")


@dataclass(frozen=True, slots=True)
class Level(Value):
    """A stretch of a series as a finding or host event keeps it: its median, the median's 95 %
    interval, and how many runs it spans."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Level:
        return cls(median=data["median"], low=data.get("low", data["median"]), high=data.get("high", data["median"]),
                   runs=data.get("runs", 0))


@dataclass(frozen=True, slots=True)
class SampleCheck(Value):
    """The newest change checked against the runs' raw per-iteration samples (detection/confirm.py):
    the 95 % interval of the relative change of the median, its p-value, and whether it confirms."""

    interval: tuple[float, float]
    p_value: float | None
    confirmed: bool | None  # None: the samples could not decide

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleCheck:
        low, high = data["interval"]
        return cls(interval=(low, high), p_value=data.get("p_value"), confirmed=data.get("confirmed"))


# How many runs before a drift's start a step may begin and still be one of the stairs the step search
# cut the creep into (detection folds such steps into the drift; storage resolves their findings).
STAIR_SLACK_RUNS = 4


@dataclass(frozen=True, slots=True)
class Drift(Value):
    """A steady movement of a series (a drift finding's shape): how fast, relative to the level where
    it began, per run and per day (None when the runs span no time), and over how many runs so far.
    The finding's `rel_change` is how far it has gone in all; `change_run_id` where it began."""

    slope_per_run: float
    slope_per_day: float | None
    runs: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Drift:
        return cls(slope_per_run=data["slope_per_run"], slope_per_day=data.get("slope_per_day"), runs=data["runs"])


# What a series times: one inference call at a time (every model has these series), a full training
# step (forward, backward, optimiser step), or inference under N concurrent callers.
SERIES_MODES = ("infer", "train", "load")


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One benchmark series of a model: detection runs per key and metric.

    `mode` and `concurrency` tell an inference series (the default, labelled as before) from a
    training-step series (`…/train`) and from a series under concurrent load (`…/load×4`).
    """

    variant: str
    device: str
    batch_size: int
    mode: str = "infer"
    concurrency: int = 1

    def label(self) -> str:
        base = f"{self.variant}/{self.device}/b{self.batch_size}"
        if self.mode == "train":
            return f"{base}/train"
        if self.mode == "load":
            return f"{base}/load×{self.concurrency}"
        return base

    @property
    def is_inference(self) -> bool:
        """One call at a time, the series SLOs, frozen references and optimisation speak of."""
        return self.mode == "infer"


@dataclass(frozen=True, slots=True)
class SeriesRun:
    """One run as detection reads it."""

    run_id: int
    started_at: datetime
    key: SeriesKey
    status: str
    flags: tuple[str, ...]
    env: dict[str, Any]
    metrics: dict[str, float | None]  # every RunMetrics figure by name
    reference_id: int | None = None  # the frozen reference it was timed against, if any


@dataclass(frozen=True, slots=True)
class FindingRecord:
    """A finding as stored and printed (`perfguard check --json` emits `to_json()`)."""

    model: str
    key: SeriesKey
    metric: str
    change: str
    verdict: str
    change_run_id: int
    change_at: datetime
    before: Level
    after: Level
    rel_change: float
    p_value: float
    samples: SampleCheck | None = None
    env_diff: dict[str, Any] | None = None  # environment field -> (old, new)
    cause: str | None = None
    # The A/B against the reference (absolute readings); the levels of both figures (other readings).
    confirmation: dict[str, Any] | None = None
    diagnosis: Diagnosis | None = None  # profile diff of the model against its reference
    state: str = "open"
    resolution: str | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    resolved_at: datetime | None = None
    id: int | None = None
    reading: str = "absolute"  # the series it was found in (monitor/detection/readings.py)
    kind: str = "step"  # step: a new level since the change run | drift: a steady movement since then
    drift: Drift | None = None  # a drift's slope

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "key"}
        data.update(variant=self.key.variant, device=self.key.device, batch_size=self.key.batch_size,
                    mode=self.key.mode, concurrency=self.key.concurrency)
        for name in ("before", "after", "samples", "diagnosis", "drift"):
            data[name] = data[name].to_dict() if data[name] is not None else None
        for name in ("change_at", "first_seen", "last_seen", "resolved_at"):
            value = data[name]
            data[name] = value.isoformat() if value is not None else None
        return data


@dataclass(frozen=True, slots=True)
class ReferenceInfo:
    """The newest frozen reference of a model variant on a device."""

    id: int
    created_at: datetime
    artifact: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)
    lost_at: datetime | None = None  # it stopped loading or reproducing its output
    lost_reason: str | None = None
