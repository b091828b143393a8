"""The worker protocol: one job type per mode, each crossing the JSON channel unchanged, and one
worker runner for each."""

from __future__ import annotations

import dataclasses

import pytest

from monitor.core.workloads import LoadSpec, TrainSpec
from monitor.harness import worker
from monitor.harness.protocol import (
    JOB_TYPES,
    ArtifactRef,
    BenchmarkJob,
    CandidateRequest,
    CandidatesJob,
    CompareJob,
    FreezeJob,
    InputTensor,
    PrepareJob,
    ProfileJob,
    SamplingSettings,
    Subject,
    TrainCompareJob,
    make_job,
    read_job,
)

REF = ArtifactRef(kind="state_dict", path="/refs/m/reference.state.pt", sha256="ab" * 32, factory="pkg.mod:build",
                  torch_version="2.13.0+cpu")


def subject(label: str = "baseline", **kw) -> Subject:
    return Subject(label=label, factory="pkg.mod:build", inputs=[InputTensor([4, 16])], **kw)


SHARED = {"model": "m", "batch_size": 4, "device": "cpu", "threads": 1, "sys_path": ["/srv/models"],
          "sampling": SamplingSettings(max_time_s=2.0, min_samples=10)}
EVERY_MODE = [
    BenchmarkJob(subjects=[subject()], reference=subject("reference", artifact=REF), reference_id=7, probe=True,
                 **SHARED),
    CompareJob(subjects=[subject("current"), subject("reference", artifact=REF)], **SHARED),
    FreezeJob(subjects=[subject()], freeze_dir="/refs/m", probe=True, **SHARED),
    CandidatesJob(subjects=[subject("current")], candidates_dir="/cands", train="pkg.mod:tune", fidelity="top1",
                  candidates=[CandidateRequest("int8", "dynamic_int8", {"dtype": "qint8"})], **SHARED),
    TrainCompareJob(subjects=[subject()], train_step=TrainSpec(lr=0.1),
                    candidates=[TrainSpec(lr=0.1, amp="bf16"), TrainSpec(lr=0.1, amp="fp16")], **SHARED),
    BenchmarkJob(subjects=[subject()], train_step=TrainSpec(loss="mse", optimizer="adam"), **SHARED),
    BenchmarkJob(subjects=[subject()], load=LoadSpec(4, 2.0, 0.5, processes=True), **SHARED),
    ProfileJob(subjects=[subject("current")], **SHARED),
    PrepareJob(subjects=[], prepare="pkg.mod:download", **SHARED),
]


@pytest.mark.parametrize("job", EVERY_MODE, ids=lambda j: f"{j.mode}-{getattr(j, 'series_mode', '')}")
def test_every_mode_crosses_the_json_channel_as_its_own_type(job):
    back = read_job(job.to_json())
    assert type(back) is type(job) and back == job


def test_every_mode_has_one_worker_runner():
    assert set(worker.RUNNERS) == set(JOB_TYPES.values()) == {type(j) for j in EVERY_MODE}


def test_a_mode_carries_only_its_own_fields():
    assert {f.name for f in dataclasses.fields(CompareJob)} == set(SHARED) | {"subjects"}
    with pytest.raises(TypeError, match="freeze_dir"):
        CompareJob(subjects=[subject()], freeze_dir="/refs", **SHARED)


def test_a_planned_run_becomes_another_mode_keeping_what_they_share():
    planned = EVERY_MODE[0]
    freeze = planned.as_job(FreezeJob, freeze_dir="/refs/new")
    assert freeze.shared() == planned.shared() and freeze.freeze_dir == "/refs/new" and not freeze.probe
    prepare = planned.as_job(PrepareJob, subjects=[], prepare="pkg.mod:download")
    assert prepare.model == "m" and prepare.subjects == [] and prepare.sampling == planned.sampling


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: make_job("warp", subjects=[], **SHARED), "unknown worker job mode 'warp'; known: single, ab"),
        (lambda: CandidatesJob(subjects=[subject(), subject()], candidates_dir="/c", **SHARED), "takes one subject"),
        (lambda: PrepareJob(subjects=[subject()], prepare="pkg.mod:download", **SHARED), "takes no subjects"),
        (lambda: BenchmarkJob(subjects=[subject()], reference=subject("reference"), **SHARED), "loaded from its art"),
    ],
)
def test_a_malformed_job_is_refused_naming_what_is_wrong(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()
