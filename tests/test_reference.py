"""Frozen reference copies end to end: freeze in a real worker, fall back kind by kind, refuse bad files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.core.runs import EnvFingerprint, HostCondition
from monitor.harness.protocol import (
    REFERENCE_LABEL,
    ArtifactRef,
    InputTensor,
    SamplingSettings,
    Subject,
    WorkerJob,
    WorkerResult,
    make_job,
    read_job,
)
from monitor.harness.reference import CHECK_FILE
from monitor.harness.runner import WorkerOutcome, run_worker, to_records
from monitor.harness.worker_pool import WorkerPool

TESTS = Path(__file__).parent
REPO = TESTS.parent
# These tests check the plumbing, not the noise rules: keep every round, even on a busy host.
QUICK = SamplingSettings(max_time_s=0.4, min_samples=20, contention_cpu_pct=1e9)
Frozen = tuple[WorkerJob, WorkerOutcome]


def subject(factory: str, width: int = 16, **kw) -> Subject:
    return Subject(label=kw.pop("label", "baseline"), factory=factory, inputs=[InputTensor([4, width])], **kw)


def job(subjects: list[Subject], *, mode: str = "single", freeze_dir: Path | str | None = None) -> WorkerJob:
    extra = {"freeze_dir": None if freeze_dir is None else str(freeze_dir)} if mode == "freeze" else {}
    return make_job(
        mode, model="m", subjects=subjects, batch_size=4, threads=1, sampling=QUICK,
        sys_path=[str(TESTS), str(REPO)], **extra,
    )


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory, workers: WorkerPool) -> Callable[..., Frozen]:
    """Freeze a factory's model once per module (a worker each), for every test that needs its copy."""
    done: dict[str, Frozen] = {}

    def freeze(factory: str, width: int = 16) -> Frozen:
        if factory not in done:
            folder = tmp_path_factory.mktemp(factory.replace(":", "-").replace(".", "-"))
            freeze_job = job([subject(factory, width)], mode="freeze", freeze_dir=folder)
            done[factory] = freeze_job, run_worker(freeze_job, timeout_s=120, pool=workers)
        return done[factory]

    return freeze


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ok_result(outcome: WorkerOutcome) -> WorkerResult:
    assert outcome.status == "ok", outcome.error
    assert outcome.result is not None
    return outcome.result


def only_the_artifact(folder: Path, name: str) -> None:
    """A refused kind leaves nothing behind: no temporary file, no file under its own name; beside the
    accepted copy lies only its check file (the example inputs and its outputs)."""
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, CHECK_FILE])


@pytest.mark.parametrize(("factory", "width"), [("workloads:tiny", 16), ("monitor.examples.models:mlp", 1024)])
def test_a_plain_model_is_frozen_as_a_torchscript_trace_and_timed_beside_itself(frozen, factory, width):
    freeze_job, outcome = frozen(factory, width)
    result = ok_result(outcome)
    ref = result.frozen
    assert ref is not None and ref.kind == "torchscript" and ref.fallbacks == []
    assert ref.factory == factory and ref.torch_version == result.env.torch
    path = Path(ref.path)
    assert path.is_absolute() and path.name == "reference.ts"
    assert ref.sha256 == sha256(path)
    only_the_artifact(path.parent, "reference.ts")
    assert [s.label for s in result.subjects] == ["baseline", REFERENCE_LABEL]
    assert all(s.metrics.samples >= 20 for s in result.subjects)
    assert result.subjects[0].metrics.params == result.subjects[1].metrics.params  # the same weights
    ratio = result.comparison[REFERENCE_LABEL]
    assert ratio["rounds"] >= 1 and ratio["ratio_p50"] > 0  # the copy's cost relative to the live model
    [record] = to_records(freeze_job, outcome, "baseline")  # the copy is no series of its own
    assert record.variant == "baseline" and record.status == "ok"
    assert record.details["frozen"] == ref.to_dict()
    assert record.details["comparison"] == result.comparison


def test_an_ab_job_times_a_frozen_copy_beside_the_live_model(frozen, workers: WorkerPool):
    _, freezing = frozen("workloads:tiny")
    ref = ok_result(freezing).frozen
    ab = job(
        [subject("workloads:tiny", label="current"), subject("workloads:tiny", label="reference", artifact=ref)],
        mode="ab",
    )
    outcome = run_worker(ab, timeout_s=60, pool=workers)
    result = ok_result(outcome)
    assert result.frozen is None
    current, reference = to_records(ab, outcome, "baseline")
    assert (current.variant, reference.variant) == ("current", "reference")
    ratio = result.comparison["reference"]
    assert ratio["rounds"] >= 1 and math.isfinite(ratio["ratio_p50"])


def test_data_dependent_control_flow_is_frozen_as_torchscript_that_keeps_both_branches(frozen):
    _, outcome = frozen("workloads:data_dependent")
    result = ok_result(outcome)
    ref = result.frozen
    assert ref.kind == "torchscript" and Path(ref.path).name == "reference.ts"
    (traced,) = ref.fallbacks
    assert traced.startswith("torchscript/trace: TraceRefused") and "Python boolean" in traced
    only_the_artifact(Path(ref.path).parent, "reference.ts")
    assert [s.label for s in result.subjects] == ["baseline", REFERENCE_LABEL]

    # A trace would have baked in the branch the example input took; the scripted copy kept both.
    import torch
    import workloads

    from monitor.harness import reference

    copy, model = reference.load(ref, "cpu"), workloads.data_dependent().eval()
    x = torch.randn(4, 16).abs()
    with torch.inference_mode():
        for sign in (1, -1):
            torch.testing.assert_close(copy(sign * x), model(sign * x))


@pytest.mark.timing
def test_a_model_only_python_can_run_is_frozen_as_its_state_dict_and_factory(frozen):
    _, outcome = frozen("workloads:numpy_forward")
    result = ok_result(outcome)
    ref = result.frozen
    assert ref.kind == "state_dict" and ref.factory == "workloads:numpy_forward"
    assert Path(ref.path).name == "reference.state.pt" and ref.sha256 == sha256(ref.path)
    assert [r.split(":")[0] for r in ref.fallbacks] == ["torchscript/trace", "torchscript/script", "exported"]
    assert "NumPy array" in ref.fallbacks[0] and ".numpy()" in ref.fallbacks[2]
    only_the_artifact(Path(ref.path).parent, "reference.state.pt")
    # Rebuilt from the same code and weights, the copy costs what the live model does.
    assert 0.5 < result.comparison[REFERENCE_LABEL]["ratio_p50"] < 2.0


def test_a_model_no_copy_can_reproduce_fails_the_freeze_with_every_reason(tmp_path, workers: WorkerPool):
    freezing = job([subject("workloads:random_output")], mode="freeze", freeze_dir=tmp_path)
    outcome = run_worker(freezing, timeout_s=120, pool=workers)
    assert outcome.status == "failed"
    assert "ArtifactError: no reference copy of workloads:random_output reproduces its output" in outcome.error
    for kind in ("exported:", "torchscript/trace:", "torchscript/script:", "state_dict:"):
        assert kind in outcome.error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("subjects", "freeze_dir", "needle"),
    [
        ([subject("workloads:tiny")], None, "needs freeze_dir"),
        ([subject("workloads:tiny"), subject("workloads:tiny")], "/refs", "takes one subject"),
        ([subject("workloads:tiny", label=REFERENCE_LABEL)], "/refs", "is the frozen copy's"),
    ],
)
def test_a_malformed_freeze_job_is_refused_before_any_worker_starts(subjects, freeze_dir, needle):
    with pytest.raises(ValueError, match=needle):
        job(subjects, mode="freeze", freeze_dir=freeze_dir)


@pytest.mark.parametrize("damage", ["altered", "missing"])
def test_an_altered_or_missing_artifact_is_refused_naming_the_file(frozen, tmp_path, damage, workers: WorkerPool):
    _, freezing = frozen("workloads:tiny")
    ref = ok_result(freezing).frozen
    copy = tmp_path / Path(ref.path).name
    shutil.copyfile(ref.path, copy)
    if damage == "altered":
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0x01
        copy.write_bytes(bytes(data))
    else:
        copy.unlink()
    bad = ArtifactRef(**{**ref.to_dict(), "path": str(copy)})
    outcome = run_worker(job([subject("workloads:tiny", artifact=bad)]), timeout_s=60, pool=workers)
    assert outcome.status == "failed"
    assert f"ArtifactError: reference artifact {copy} " in outcome.error
    assert ("does not match its recorded sha256" if damage == "altered" else "is missing") in outcome.error


class Payload:
    """Unpickling this runs os.mkdir(marker): what a planted 'state dict' would do to a careless loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_state_dict_is_read_weights_only_so_a_planted_pickle_never_runs(tmp_path, workers: WorkerPool):
    import torch

    planted = tmp_path / "reference.state.pt"
    torch.save(Payload(tmp_path / "ran-in-worker"), planted)
    control = tmp_path / "ran-in-control"
    torch.save(Payload(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.is_dir()  # the payload is live: an unrestricted load runs it

    ref = ArtifactRef(kind="state_dict", path=str(planted), sha256=sha256(planted), factory="workloads:tiny",
                      torch_version=torch.__version__)
    outcome = run_worker(job([subject("workloads:tiny", artifact=ref)]), timeout_s=60, pool=workers)
    assert outcome.status == "failed"
    assert "UnpicklingError" in outcome.error and "Weights only load failed" in outcome.error
    assert not (tmp_path / "ran-in-worker").exists()


def test_artifact_refs_survive_the_json_protocol():
    ref = ArtifactRef(kind="state_dict", path="/refs/m/reference.state.pt", sha256="ab" * 32,
                      factory="pkg.mod:build", torch_version="2.13.0+cpu", fallbacks=["exported: why"])
    ab = job([subject("pkg.mod:build", label="current"), subject("pkg.mod:build", artifact=ref)], mode="ab")
    back = read_job(ab.to_json())
    assert back == ab and back.subjects[0].artifact is None and back.subjects[1].artifact == ref
    freezing = job([subject("pkg.mod:build")], mode="freeze", freeze_dir=Path("/refs/m"))
    assert read_job(freezing.to_json()) == freezing and freezing.freeze_dir == "/refs/m"
    result = WorkerResult(env=EnvFingerprint(torch="2.13.0+cpu"), host=HostCondition(), subjects=[], frozen=ref)
    event = json.loads(json.dumps(result.to_event()))
    assert WorkerResult.from_event(event).frozen == ref
    assert WorkerResult.from_event({**event, "frozen": None}).frozen is None

