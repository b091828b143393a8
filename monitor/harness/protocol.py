"""What the parent sends the worker and what the worker sends back, as JSON lines.

The runner writes one `BenchmarkJob` to the worker's stdin; the worker answers on its own protocol
channel (its original stdout; model code printing goes to stderr) with events: `started` (the
environment, sent before any model code runs so even a crash has it), `progress`, and one `result`.
Plain dataclasses so both sides, which share no process, agree on one shape.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from storage.records import EnvFingerprint, HostCondition, RunMetrics


@dataclass(slots=True)
class InputTensor:
    """An example input to build in the worker: full shape (batch first), dtype, integer range."""

    shape: list[int]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None


@dataclass(slots=True)
class Subject:
    """One callable to time: a model factory and how to feed it."""

    label: str
    factory: str
    inputs: list[InputTensor] | None = None
    inputs_factory: str | None = None
    eval: str | None = None


@dataclass(slots=True)
class SamplingSettings:
    """Stopping and noise rules for one benchmark (see sampling.py for how they are used)."""

    max_time_s: float = 10.0
    target_ci_rel: float = 0.01
    min_samples: int = 100
    contention_cpu_pct: float = 15.0
    warmup_fraction: float = 0.3  # of max_time_s, at most, spent warming up


@dataclass(slots=True)
class BenchmarkJob:
    """One worker's task: time one subject, or several interleaved (A/B), at one batch size."""

    model: str
    subjects: list[Subject]
    batch_size: int
    device: str = "cpu"
    threads: int | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    sys_path: list[str] = field(default_factory=list)
    mode: Literal["single", "ab"] = "single"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchmarkJob:
        data = json.loads(text)
        subjects = []
        for s in data.pop("subjects"):
            inputs = s.pop("inputs")
            subjects.append(
                Subject(**s, inputs=None if inputs is None else [InputTensor(**i) for i in inputs])
            )
        sampling = SamplingSettings(**data.pop("sampling"))
        return cls(**data, subjects=subjects, sampling=sampling)


@dataclass(slots=True)
class SubjectResult:
    """What the worker measured for one subject."""

    label: str
    metrics: RunMetrics
    samples_ms: list[float]
    flags: list[str]
    details: dict[str, Any]


@dataclass(slots=True)
class WorkerResult:
    """The worker's final answer: per-subject results plus what they share."""

    env: EnvFingerprint
    host: HostCondition
    subjects: list[SubjectResult]
    comparison: dict[str, Any] | None = None  # A/B mode: ratios against the first subject

    def to_event(self) -> dict[str, Any]:
        return {"event": "result", **dataclasses.asdict(self)}

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> WorkerResult:
        return cls(
            env=EnvFingerprint.from_dict(data["env"]),
            host=HostCondition.from_dict(data["host"]),
            subjects=[
                SubjectResult(
                    label=s["label"],
                    metrics=RunMetrics.from_dict(s["metrics"]),
                    samples_ms=s["samples_ms"],
                    flags=s["flags"],
                    details=s["details"],
                )
                for s in data["subjects"]
            ],
            comparison=data.get("comparison"),
        )
