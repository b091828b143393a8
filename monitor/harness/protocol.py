"""What the parent sends the worker and what the worker sends back, as JSON lines.

The runner writes one job (a `Job` subclass per mode) to the worker's stdin; the worker answers on
its own protocol channel (its original stdout; model code printing goes to stderr) with events:
`started` (the environment, sent before any model code runs so even a crash has it), `progress`, and
one `result`. Plain dataclasses so both sides, which share no process, agree on one shape.

A job in "freeze" mode also writes a frozen reference copy of its model to disk (see reference.py) and
answers with an `ArtifactRef` to it, which later jobs name in `Subject.artifact` to time that copy.
A "single" job with a `reference` (a scheduled run of a series that has one) times that copy beside
its model and reports the ratio in the model's metrics (`rel_to_reference`); with `probe`, the
host-speed probe rides along (host_probe.py). A "candidates" job builds optimised candidates of its
first subject (monitor/transforms/recipes.py), saves each, and times them interleaved with it; a
"profile" job profiles each subject's operators; a "prepare" job runs a model's prepare step, untimed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from monitor.core.runs import EnvFingerprint, HostCondition, RunMetrics
from monitor.core.workloads import LoadSpec, TrainSpec


@dataclass(slots=True)
class InputTensor:
    """An example input to build in the worker: full shape (batch first), dtype, integer range."""

    shape: list[int]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None


ArtifactKind = Literal["onnx", "exported", "torchscript", "state_dict"]
REFERENCE_LABEL = "reference"  # the frozen copy's label in a freeze job's subjects and comparison


@dataclass(slots=True)
class ArtifactRef:
    """A frozen reference copy of a model on disk, as reference.freeze wrote it.

    `sha256` is the trust anchor: the worker loads nothing whose bytes differ from it, so the ref must
    be kept somewhere at least as trusted as the file (the database). `kind` says how much is frozen:
    an exported program or TorchScript module holds code and weights; a state dict holds only the
    weights, rebuilt through `factory` at load time, so a code change in the factory shows in it too.
    The copy is valid for the example inputs' shapes (one series, one batch size).
    """

    kind: ArtifactKind
    path: str  # absolute
    sha256: str
    factory: str  # the original model's factory; the state_dict kind rebuilds the module with it
    torch_version: str
    fallbacks: list[str] = field(default_factory=list)  # why each earlier kind was refused
    # Example inputs and the copy's outputs on them, saved at freeze time: every later load must still
    # reproduce them (a torch upgrade may load an old copy yet compute something else). None for
    # copies frozen before the check existed.
    check_path: str | None = None
    check_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactRef:
        return cls(**{**data, "fallbacks": list(data.get("fallbacks", []))})


@dataclass(slots=True)
class RecipeStep:
    """One optimisation applied to a model, with the resolved params that rebuild its structure."""

    recipe: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class VariantSpec:
    """How to build a variant of a model: its factory's module, then each recipe's structure, then
    its saved weights (a state dict, loaded with weights_only after a sha256 check). The baseline
    has no steps and no weights file."""

    name: str
    steps: list[RecipeStep] = field(default_factory=list)
    weights_path: str | None = None
    weights_sha256: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSpec:
        return cls(
            name=data["name"],
            steps=[RecipeStep(**step) for step in data.get("steps", [])],
            weights_path=data.get("weights_path"),
            weights_sha256=data.get("weights_sha256"),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class CandidateRequest:
    """A candidate for a "candidates" job to build from its first subject with one recipe."""

    label: str
    recipe: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Subject:
    """One callable to time: a model factory (or a frozen copy of its model) and how to feed it."""

    label: str
    factory: str
    inputs: list[InputTensor] | None = None
    inputs_factory: str | None = None
    eval: str | None = None
    eval_holdout: float | None = None  # when set, accuracy reads only this held-out share (core/holdout.py)
    artifact: ArtifactRef | None = None  # when set, the model is loaded from it, not built by factory
    variant: VariantSpec | None = None  # when set (and no artifact), the factory's model becomes it

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subject:
        data = dict(data)
        inputs, artifact, variant = data.pop("inputs"), data.pop("artifact", None), data.pop("variant", None)
        return cls(
            **data,
            inputs=None if inputs is None else [InputTensor(**i) for i in inputs],
            artifact=None if artifact is None else ArtifactRef.from_dict(artifact),
            variant=None if variant is None else VariantSpec.from_dict(variant),
        )


@dataclass(slots=True)
class SamplingSettings:
    """Stopping and noise rules for one benchmark (see sampling.py for how they are used)."""

    max_time_s: float = 10.0
    target_ci_rel: float = 0.01
    min_samples: int = 100
    contention_cpu_pct: float = 15.0
    warmup_fraction: float = 0.3  # of max_time_s, at most, spent warming up


JobT = TypeVar("JobT", bound="Job")


@dataclass(slots=True, kw_only=True)
class Job:
    """What every worker task shares: the model's subjects, at one batch size, on one device.

    Each mode is its own subclass with only the fields it uses; `mode` names it on the wire and the
    worker dispatches on the type (worker.RUNNERS). `as_job` turns a planned scheduled run into
    another mode's job of the same model, keeping what they share.
    """

    mode: ClassVar[str]
    model: str
    subjects: list[Subject]
    batch_size: int
    device: str = "cpu"
    threads: int | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    sys_path: list[str] = field(default_factory=list)

    def shared(self) -> dict[str, Any]:
        """The fields every mode has, as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Job)}

    def as_job(self, kind: type[JobT], **fields: Any) -> JobT:
        return kind(**{**self.shared(), **fields})

    def to_json(self) -> str:
        return json.dumps({"mode": self.mode, **dataclasses.asdict(self)})


@dataclass(slots=True, kw_only=True)
class BenchmarkJob(Job):
    """A scheduled run: time one subject (or several, each alone in its series).

    With a `reference` (the series' frozen copy, loaded from its artifact) the copy is timed
    interleaved with the first subject and the run reads relatively; with `probe` the host-speed
    probe rides along (host_probe.py). With `train_step` it times the model's training step instead
    of its inference call; with `load`, inference from that many concurrent callers.
    """

    mode: ClassVar[str] = "single"
    reference: Subject | None = None
    reference_id: int | None = None  # the database's id of `reference`
    probe: bool = False
    train_step: TrainSpec | None = None
    load: LoadSpec | None = None

    def __post_init__(self) -> None:
        if self.reference is not None and self.reference.artifact is None:
            raise ValueError("a reference is timed beside a single subject and is loaded from its artifact")
        if self.series_mode != "infer" and (self.reference is not None or len(self.subjects) != 1):
            raise ValueError("a training-step or load run times one subject, without a reference")
        if self.train_step is not None and self.load is not None:
            raise ValueError("a run times a training step or concurrent load, not both")

    @property
    def series_mode(self) -> str:
        """The mode of the series its runs are stored in (monitor.core.series.SERIES_MODES)."""
        return "train" if self.train_step is not None else "load" if self.load is not None else "infer"

    @property
    def concurrency(self) -> int:
        return self.load.concurrency if self.load is not None else 1


@dataclass(slots=True, kw_only=True)
class CompareJob(Job):
    """An A/B: time the subjects interleaved and compare each with the first."""

    mode: ClassVar[str] = "ab"


@dataclass(slots=True, kw_only=True)
class FreezeJob(Job):
    """Build the single subject from its factory, freeze it into `freeze_dir`, and time the live model
    and the reloaded copy interleaved: the ratio is the copy's baseline cost relative to the model,
    against which a later A/B of the two tells a host change from a model regression."""

    mode: ClassVar[str] = "freeze"
    freeze_dir: str
    probe: bool = False

    def __post_init__(self) -> None:
        if not self.freeze_dir:
            raise ValueError("a freeze job needs freeze_dir")
        if len(self.subjects) != 1 or self.subjects[0].artifact is not None:
            raise ValueError("a freeze job takes one subject, built from its factory")
        if self.subjects[0].label == REFERENCE_LABEL:
            raise ValueError(f"the label {REFERENCE_LABEL!r} is the frozen copy's; give the model another")


@dataclass(slots=True, kw_only=True)
class CandidatesJob(Job):
    """Build optimised candidates of the one subject (the current variant), save each under
    `candidates_dir`, and time them interleaved with it; `train` is the fine-tune hook, `fidelity`
    how to compare their outputs with the current variant's."""

    mode: ClassVar[str] = "candidates"
    candidates_dir: str
    candidates: list[CandidateRequest] = field(default_factory=list)
    train: str | None = None
    fidelity: Literal["auto", "top1", "relative_error"] = "auto"

    def __post_init__(self) -> None:
        if not self.candidates_dir or len(self.subjects) != 1:
            raise ValueError("a candidates job takes one subject (the current variant) and candidates_dir")


@dataclass(slots=True, kw_only=True)
class TrainCompareJob(Job):
    """Time the model's training step as `train_step` takes it and as each of `candidates` would
    (autocast), interleaved, each on its own copy of the model; and, from identical copies, the loss
    each reaches after `fidelity_steps` steps."""

    mode: ClassVar[str] = "train_ab"
    train_step: TrainSpec
    candidates: list[TrainSpec] = field(default_factory=list)
    fidelity_steps: int = 5

    def __post_init__(self) -> None:
        if len(self.subjects) != 1 or self.fidelity_steps < 1 or not self.candidates:
            raise ValueError("a training-step comparison takes one subject, candidates and at least one fidelity step")


@dataclass(slots=True, kw_only=True)
class ProfileJob(Job):
    """Profile each subject's operators (where its time goes) instead of timing it."""

    mode: ClassVar[str] = "profile"


@dataclass(slots=True, kw_only=True)
class PrepareJob(Job):
    """Run the model's prepare step (a callable's import path) untimed, in a worker of its own before
    the model's benchmarks, so that what it does never lands in a measured window."""

    mode: ClassVar[str] = "prepare"
    prepare: str

    def __post_init__(self) -> None:
        if self.subjects:
            raise ValueError("a prepare job times nothing: it takes no subjects")


WorkerJob = BenchmarkJob | CompareJob | FreezeJob | CandidatesJob | TrainCompareJob | ProfileJob | PrepareJob
JOB_TYPES: dict[str, type[WorkerJob]] = {
    kind.mode: kind
    for kind in (BenchmarkJob, CompareJob, FreezeJob, CandidatesJob, TrainCompareJob, ProfileJob, PrepareJob)
}


def make_job(mode: str, **fields: Any) -> WorkerJob:
    """The job of the named mode; a ValueError names an unknown one."""
    if mode not in JOB_TYPES:
        raise ValueError(f"unknown worker job mode {mode!r}; known: {', '.join(JOB_TYPES)}")
    return JOB_TYPES[mode](**fields)


def read_job(text: str) -> WorkerJob:
    """A job from the JSON `Job.to_json` wrote."""
    data = json.loads(text)
    data["subjects"] = [Subject.from_dict(s) for s in data["subjects"]]
    data["sampling"] = SamplingSettings(**data["sampling"])
    if data.get("reference") is not None:
        data["reference"] = Subject.from_dict(data["reference"])
    if data.get("train_step") is not None:
        data["train_step"] = TrainSpec.from_dict(data["train_step"])
    if "candidates" in data:  # a training-step comparison's are autocast specs; a candidates job's, recipes
        build = TrainSpec.from_dict if data["mode"] == TrainCompareJob.mode else (lambda c: CandidateRequest(**c))
        data["candidates"] = [build(c) for c in data["candidates"]]
    if data.get("load") is not None:
        data["load"] = LoadSpec.from_dict(data["load"])
    return make_job(data.pop("mode"), **data)


@dataclass(slots=True)
class SubjectResult:
    """What the worker measured for one subject."""

    label: str
    metrics: RunMetrics
    samples_ms: list[float]
    flags: list[str]
    details: dict[str, Any]


@dataclass(slots=True)
class BuiltCandidate:
    """What a candidates job made of one request: the variant it saved, or why it could not.

    `fidelity` compares the candidate's output with the current variant's on the model's inputs:
    `{"kind": "top1", "agreement": 0.99}` for classifiers, `{"kind": "relative_error", "value": 0.02}`
    otherwise. `build_s` includes calibration and fine-tuning.
    """

    label: str
    recipe: str
    variant: dict[str, Any] | None = None  # a VariantSpec as a dict
    fidelity: dict[str, Any] | None = None
    error: str | None = None
    build_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PrepareReport:
    """What a model's prepare step cost, reported apart from its benchmarks."""

    seconds: float
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class WorkerResult:
    """The worker's final answer: per-subject results plus what they share."""

    env: EnvFingerprint
    host: HostCondition
    subjects: list[SubjectResult]
    comparison: dict[str, Any] | None = None  # A/B and freeze modes: ratios against the first subject
    frozen: ArtifactRef | None = None  # freeze mode: the copy it wrote
    built: list[BuiltCandidate] | None = None  # candidates mode: each candidate, built or not
    profiles: dict[str, list[dict[str, Any]]] | None = None  # profile mode: operator rows per subject
    # Why the job's reference could not be timed (it would not load, or no longer reproduces its
    # output): the run then measured absolutely, and the reference is marked lost.
    reference_error: str | None = None
    prepared: PrepareReport | None = None  # prepare mode

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
            frozen=None if data.get("frozen") is None else ArtifactRef.from_dict(data["frozen"]),
            built=None if data.get("built") is None else [BuiltCandidate(**b) for b in data["built"]],
            profiles=data.get("profiles"),
            reference_error=data.get("reference_error"),
            prepared=None if data.get("prepared") is None else PrepareReport(**data["prepared"]),
        )
