"""Knowledge distillation as an action, for real: a student trained in the worker against the model's
soft targets, bounded in time, judged like any candidate, kept or refused with its numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

import torch

from monitor.config import LoadedConfig, load_config
from monitor.harness.protocol import BenchmarkJob, InputTensor, RecipeStep, Subject, VariantSpec
from monitor.harness.variants import needs_base, save_candidate
from monitor.core.holdout import is_held_out
from monitor.harness.worker import Prepared, accuracy
from monitor.registry import subject_for
from monitor.transforms.recipes import RecipeError, build, structure
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.action import OptimizeRequest, optimize
from monitor.service.benchmark import benchmark_models
from storage.db import Database
from tests.cli_helpers import TESTS_DIR, tiny_model, write_config

pytestmark = pytest.mark.slow
DISTILL = {"student": "workloads:linear_student", "data": "workloads:distill_batches", "lr": 0.1, "epochs": 3,
           "max_time_s": 60.0}


@pytest.fixture(autouse=True)
def workloads_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # workers inherit it


def configured(tmp_path: Path, **distill: object) -> LoadedConfig:
    model = tiny_model("wide", factory="workloads:wide_linear", eval="workloads:wide_linear_eval",
                       distill={k: v for k, v in {**DISTILL, **distill}.items() if v is not None}, optimize={"accuracy_tolerance": 0.02}, max_time_s=1.5)
    return load_config(write_config(tmp_path / "perfguard.toml", [model], storage_url=f"sqlite:///{tmp_path / 'p.db'}",
                                    extra="[detection]\nconfirm = false\n"))


# Kept only if its A/B proves it faster, so it runs alone: beside another test process's benchmark,
# its 1.5 s budget (warm-up included) once left fewer than the 3 rounds an interval needs.
@pytest.mark.timing
def test_a_student_that_learns_the_teacher_within_its_time_bound_is_kept(tmp_path: Path, workers: WorkerPool) -> None:
    loaded = configured(tmp_path)
    phases: list[str] = []
    with Database.open(loaded.storage_url()) as db:
        record = optimize(db, loaded, OptimizeRequest("wide", action="distill"), pool=workers,
                          progress=lambda phase, _samples: phases.append(phase))
        assert record.status == "accepted" and record.kind == "distill", record.reason
        [candidate] = record.candidates
        trained = candidate.numbers.variant["steps"][-1]["params"]
        assert trained["steps"] == 96 and trained["epochs_run"] == 3 and not trained["time_bound_hit"]
        assert candidate.numbers.accuracy >= 0.98 and candidate.numbers.current_accuracy == 1.0
        assert candidate.numbers.size_mb < candidate.numbers.current_size_mb / 100
        assert [p for p in phases if p.startswith("distill")] == [f"distill epoch {e}/3" for e in (1, 2, 3)]
        # The student is now what is served and benchmarked, rebuilt from its saved weights.
        (run,) = benchmark_models(loaded, db, pool=workers)
    assert run.status == "ok" and run.variant == record.to_variant and run.metrics.params == 16 * 4 + 4
    assert run.metrics.accuracy >= 0.98


def test_a_student_stopped_by_its_time_bound_short_of_the_tolerance_is_refused_with_its_numbers(
    tmp_path: Path, workers: WorkerPool
) -> None:
    loaded = configured(tmp_path, max_time_s=0.001)
    with Database.open(loaded.storage_url()) as db:
        record = optimize(db, loaded, OptimizeRequest("wide", action="distill"), pool=workers)
    assert record.status == "rejected" and record.to_variant is None
    [candidate] = record.candidates
    assert candidate.numbers.variant["steps"][-1]["params"]["time_bound_hit"] is True
    assert any("accuracy" in reason and "over the tolerance 0.02" in reason for reason in candidate.reasons), \
        candidate.reasons


def test_without_data_the_student_trains_on_the_eval_less_the_share_every_accuracy_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No `distill.data`: the student trains on the eval batches not held out (6 of 8 at 0.25), and
    the model's accuracy reads the 2 held out, spread through the stream, and nothing else."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    from workloads import wide_linear, wide_linear_eval  # noqa: PLC0415 - the test models live beside the tests

    teacher, x = wide_linear().eval(), torch.randn(8, 16)
    params = dict(DISTILL, data=None, eval="workloads:wide_linear_eval", holdout=0.25, epochs=2)
    _student, resolved = build("distill", teacher, (x,), {}, None, params)
    assert resolved["steps"] == 2 * 6

    seen: list[torch.Tensor] = []

    def judged(inputs: torch.Tensor) -> torch.Tensor:
        seen.append(inputs)
        return teacher(inputs)

    with torch.no_grad():
        assert accuracy(judged, "workloads:wide_linear_eval", "cpu", held_out=0.25) == 1.0
    held = [inputs for index, (inputs, _labels) in enumerate(wide_linear_eval()) if is_held_out(index, 0.25)]
    assert len(seen) == len(held) == 2 and all(torch.equal(a, b) for a, b in zip(seen, held, strict=True))


def test_a_model_whose_student_trains_on_its_eval_has_every_accuracy_read_on_the_held_out_share(
    tmp_path: Path, workers: WorkerPool
) -> None:
    with_data, from_eval = configured(tmp_path).config.models[0], configured(tmp_path, data=None).config.models[0]
    assert subject_for(with_data, 8).eval_holdout is None
    assert subject_for(from_eval, 8).eval_holdout == 0.25
    assert from_eval.distill_params()["eval"] == "workloads:wide_linear_eval"
    assert with_data.distill_params()["eval"] is None
    # A student distilled from the eval keeps its own share, whatever the config says now.
    student = VariantSpec(name="baseline+distill", steps=[
        RecipeStep("distill", {"student": "workloads:linear_student", "eval": "workloads:wide_linear_eval",
                               "holdout": 0.5})])
    assert subject_for(with_data, 8, variant=student).eval_holdout == 0.5
    # Through the worker: the batches outside the held-out quarter are labelled wrong here.
    model = tiny_model("wide", factory="workloads:wide_linear", eval="workloads:wide_linear_eval_wrong_off_holdout",
                       inputs=[{"shape": [8, 16]}], distill={"student": "workloads:linear_student"})
    loaded = load_config(write_config(tmp_path / "wrong.toml", [model], storage_url=f"sqlite:///{tmp_path / 'w.db'}"))
    with Database.open(loaded.storage_url()) as db:
        (run,) = benchmark_models(loaded, db, pool=workers)
    assert run.status == "ok" and run.metrics.accuracy == 1.0, run.error
    assert run.details["accuracy_on"] == "the held-out 0.25 of the eval batches"


def test_the_recipe_trains_the_student_and_its_structure_takes_the_saved_weights_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    from workloads import wide_linear  # noqa: PLC0415 - the test models live beside the tests

    teacher, x = wide_linear().eval(), torch.randn(8, 16)
    before = [p.clone() for p in teacher.parameters()]
    student, resolved = build("distill", teacher, (x,), {}, None, dict(DISTILL, epochs=1))
    assert resolved["steps"] == 32 and resolved["epochs_run"] == 1 and resolved["final_loss"] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))  # left untouched
    rebuilt = structure("distill", wide_linear(), (x,), {}, resolved)
    rebuilt.load_state_dict(student.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), student(x))
    with pytest.raises(RecipeError, match="distill: distill.data: the model names no training data"):
        build("distill", teacher, (x,), {}, None, {"student": DISTILL["student"]})
    with pytest.raises(RecipeError, match="distill does not take teacher"):
        build("distill", teacher, (x,), {}, None, {**DISTILL, "teacher": "x:y"})


def test_a_distilled_variant_is_rebuilt_from_its_student_without_building_the_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factory below raises when called: the variant must come from the student's factory and the
    saved weights alone, as a scheduled run of a promoted student builds it."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    from workloads import wide_linear  # noqa: PLC0415 - the test models live beside the tests

    x = torch.randn(8, 16)
    student, resolved = build("distill", wide_linear().eval(), (x,), {}, None, dict(DISTILL, epochs=1))
    path, digest = save_candidate(student, tmp_path / "cand", "distill")
    spec = VariantSpec("distilled", [RecipeStep("dynamic_int8", {}), RecipeStep("distill", resolved)],
                       str(path), digest)
    assert not needs_base(spec) and needs_base(VariantSpec("int8", [RecipeStep("dynamic_int8", {})]))
    job = BenchmarkJob(model="wide", batch_size=8, subjects=[
        Subject("distilled", "workloads:unbuildable", inputs=[InputTensor([8, 16])], variant=spec)])
    prepared = Prepared(job.subjects[0], job)
    with torch.no_grad():
        assert torch.equal(prepared.model(x), student(x))


def test_a_model_without_a_student_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    path = write_config(tmp_path / "perfguard.toml", [tiny_model("plain")], storage_url=f"sqlite:///{tmp_path / 'p.db'}")
    loaded = load_config(path)
    with Database.open(loaded.storage_url()) as db:
        record = optimize(db, loaded, OptimizeRequest("plain", action="distill"))
    assert record.status == "rejected" and "names no student to distill into: add distill = {" in record.reason
