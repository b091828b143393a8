"""Training-step and concurrent-load series: planned from the config, timed for real in the worker, stored
and detected as series of their own, acted on and reported apart from one-call inference."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from monitor.config import LoadedConfig, load_config
from monitor.core.series import SeriesKey
from monitor.core.workloads import LoadSpec, TrainSpec
from monitor.detection.check import check_model
from monitor.harness.protocol import read_job
from monitor.harness.worker_pool import WorkerPool
from monitor.registry import plan
from monitor.service.benchmark import benchmark_models
from monitor.service.reporting import reported_models
from reports.data import gather
from reports.render import write_site
from rules.builtin.common import finding_decisions
from rules.engine import build_context
from storage import findings as store
from storage.db import Database
from storage.queries import history, save_runs
from tests.cli_helpers import TESTS_DIR, perfguard, tiny_model, write_config
from tests.report_helpers import history_runs, report_config
from tests.storage_helpers import T0

LOAD = {"concurrency": [1, 3], "duration_s": 0.3, "warmup_s": 0.05}
TRAIN = {"loss": "mse", "optimizer": "adam", "lr": 0.001}


def configured(tmp_path: Path, **fields: object) -> LoadedConfig:
    path = write_config(tmp_path / "perfguard.toml", [tiny_model("m", **fields)],
                        storage_url=f"sqlite:///{tmp_path / 'perfguard.db'}", extra="[detection]\nconfirm = false\n")
    return load_config(path)


def test_a_train_table_and_load_levels_plan_series_of_their_own(tmp_path: Path) -> None:
    loaded = configured(tmp_path, train={**TRAIN, "fine_tune": "workloads:tiny"}, load=LOAD)
    planned = plan(loaded)
    assert [p.key.label() for p in planned] == [
        "baseline/cpu/b8", "baseline/cpu/b8/train", "baseline/cpu/b8/load×1", "baseline/cpu/b8/load×3"]
    infer, train, *levels = planned
    assert train.job.train_step == TrainSpec(loss="mse", optimizer="adam", lr=0.001)
    assert [p.job.load for p in levels] == [LoadSpec(1, 0.3, 0.05), LoadSpec(3, 0.3, 0.05)]
    # The load driver times no probe, and no series but inference has a frozen reference to time.
    assert infer.job.probe and train.job.probe and not any(p.job.probe for p in levels)
    assert [p.absolute_why is not None for p in planned] == [False, True, True, True]
    assert all(p.timeout_s > infer.timeout_s for p in levels)
    for item in planned:  # what the worker reads back is the job sent
        assert read_job(item.job.to_json()) == item.job
    model = loaded.config.models[0]
    assert model.fine_tune == "workloads:tiny" and model.series_count == 4
    # A string is the fine-tune hook it always was: no training-step series.
    hook = configured(tmp_path, train="workloads:tiny").config.models[0]
    assert hook.fine_tune == "workloads:tiny" and hook.train_step is None and hook.series_count == 1


def test_training_steps_and_load_levels_are_timed_in_the_worker_and_stored_as_their_own_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: WorkerPool
) -> None:
    """`grad_checked` raises when called in train mode without autograd or in eval mode with it: every
    run below passing proves the training step ran under autograd and inference did not."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    loaded = configured(tmp_path, factory="workloads:grad_checked", train=TRAIN, load=LOAD)
    with Database.open(loaded.storage_url()) as db:
        records = benchmark_models(loaded, db, pool=workers)
        assert [(r.mode, r.concurrency, r.status) for r in records] == [
            ("infer", 1, "ok"), ("train", 1, "ok"), ("load", 1, "ok"), ("load", 3, "ok")], [r.error for r in records]
        infer, train, one, three = records
        assert train.metrics.latency_ms_p50 and train.metrics.throughput_per_s and train.metrics.samples
        assert train.metrics.probe_blas_ms is not None and train.metrics.accuracy is None
        assert three.details["concurrency"] == 3 and len(three.details["calls_per_caller"]) == 3
        assert all(calls > 0 for calls in three.details["calls_per_caller"])
        assert three.metrics.samples == three.details["calls"] and three.metrics.throughput_per_s
        stored = {(r.mode, r.concurrency): r for r in history(db, "m", limit=10, with_samples=True)}
        assert set(stored) == {("infer", 1), ("train", 1), ("load", 1), ("load", 3)}
        # Every call's latency, or every k-th once there are more than 10,000 (a fast model makes more).
        calls = three.details["calls"]
        assert len(stored[("load", 3)].samples_ms) == len(range(0, calls, -(-calls // 10_000)))
        assert [r.mode for r in history(db, "m", mode="train")] == ["train"]
        assert stored[("train", 1)].to_json()["mode"] == "train"


def series_runs(mode: str, concurrency: int, step_at: int | None, seed: int) -> list:
    runs = history_runs("m", 30, step_at=step_at, step=1.4, seed=seed, accuracy=False)
    return [dataclasses.replace(r, mode=mode, concurrency=concurrency) for r in runs]


def test_a_change_in_one_mode_is_found_in_that_series_alone_and_reported_there(tmp_path: Path) -> None:
    loaded = report_config(tmp_path, [{"name": "m", "train": TRAIN, "load": LOAD}])
    with Database.open(loaded.storage_url()) as db:
        # The same variant, device and batch size in four modes; only the training step and the
        # load level of three callers slow down.
        save_runs(db, series_runs("infer", 1, None, 0) + series_runs("train", 1, 20, 1)
                  + series_runs("load", 1, None, 2) + series_runs("load", 3, 22, 3))
        found = check_model(db, loaded, "m", loaded.config.models[0]).findings
        p50 = sorted((f for f in found if f.metric == "latency_ms_p50"), key=lambda f: f.key.mode)
        assert [f.key for f in p50] == [SeriesKey("baseline", "cpu", 8, "load", 3), SeriesKey("baseline", "cpu", 8, "train")]
        assert [f.rel_change for f in p50] == [pytest.approx(0.4, abs=0.05)] * 2
        again = {f.key for f in store.findings(db, "m") if f.metric == "latency_ms_p50"}
        assert again == {f.key for f in p50}  # the mode survives the database
        site = write_site(gather(db, reported_models(loaded)), tmp_path / "out")
        context = build_context(db, loaded, "m", found, (), T0)
    assert context is not None and {r.mode for r in context.runs} == {"infer"}  # what rules and SLOs read
    page = site.pages["m"].read_text()
    for label in ("baseline/cpu/b8/train", "baseline/cpu/b8/load×3", "Training step, baseline on cpu, batch 8"):
        assert label in page
    # A slower training step is alerted on; re-quantizing the served model cannot answer it.
    train = next(f for f in p50 if f.key.mode == "train")
    assert [d.action for d in finding_decisions(context, train, ["alert", "requantize"])] == ["alert"]
    load = next(f for f in p50 if f.key.mode == "load")  # the served variant under load: it can
    assert [d.action for d in finding_decisions(context, load, ["alert", "requantize"])] == ["alert", "requantize"]


def test_load_callers_may_be_processes_each_with_its_own_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: WorkerPool
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    loaded = configured(tmp_path, factory="workloads:grad_checked",
                        load={"concurrency": [2], "duration_s": 0.3, "warmup_s": 0.05, "processes": True})
    with Database.open(loaded.storage_url()) as db:
        _, run = benchmark_models(loaded, db, pool=workers)
    assert run.status == "ok" and run.mode == "load" and run.concurrency == 2, run.error
    assert run.details["callers"] == "processes" and len(run.details["calls_per_caller"]) == 2
    assert all(run.details["calls_per_caller"]) and run.metrics.samples == run.details["calls"]
    # Each caller holds a model (and torch) of its own: the run's peak memory counts them all.
    callers = run.details["caller_peak_rss_mb"]
    assert len(callers) == 2 and run.metrics.peak_rss_mb > sum(callers) > 0


def test_models_lists_each_models_training_and_load_series(tmp_path: Path) -> None:
    config = write_config(tmp_path / "perfguard.toml", [tiny_model("m", train=TRAIN, load=LOAD), tiny_model("plain")])
    table = perfguard("models", config=config)
    assert table.returncode == 0, table
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert "train b8; load ×1,3" in rows["m"] and " - " in rows["plain"]
    listed = {row["name"]: row for row in perfguard("models", "--json", config=config).json()}
    assert (listed["m"]["train_batch_sizes"], listed["m"]["load_concurrency"]) == ([8], [1, 3])
    assert (listed["plain"]["train_batch_sizes"], listed["plain"]["load_concurrency"]) == ([], [])
