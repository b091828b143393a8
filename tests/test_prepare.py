"""A model's prepare step (a download, a training, a cache) runs once, untimed, in a worker of its own;
its time and memory are reported apart from the benchmark's."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.harness.worker_pool import WorkerPool
from monitor.service.benchmark import benchmark_models
from storage.db import Database
from tests.cli_helpers import TESTS_DIR, tiny_model, write_config


@pytest.fixture(autouse=True)
def workloads_importable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # workers inherit it
    counter = tmp_path / "prepared"
    monkeypatch.setenv("PREPARE_COUNT", str(counter))
    return counter


def test_the_prepare_step_runs_once_outside_the_measured_window(tmp_path: Path, workloads_importable: Path, workers: WorkerPool) -> None:
    loaded = load_config(write_config(tmp_path / "perfguard.toml",
                                      [tiny_model("m", prepare="workloads:prepare_slowly", batch_sizes=[4, 8])]))
    prepared: set[str] = set()
    with Database.open(loaded.storage_url()) as db:
        first = benchmark_models(loaded, db, prepared=prepared, pool=workers)
        again = benchmark_models(loaded, db, prepared=prepared, pool=workers)
    assert [r.status for r in first + again] == ["ok"] * 4
    assert workloads_importable.read_text() == "1"  # once for the model, not per series or per call
    report = first[0].details["prepare"]
    assert report["status"] == "ok" and report["step"] == "workloads:prepare_slowly"
    assert report["seconds"] >= 1.5 and report["peak_rss_mb"] >= 300
    assert not any("prepare" in r.details for r in first[1:] + again)
    # Not in the benchmark's numbers: neither its memory nor its time.
    for record in first:
        assert record.metrics.peak_rss_mb < report["peak_rss_mb"] - 200
        assert record.details["warmup_s"] + record.details["sampling_s"] < 1.5


def test_a_failed_prepare_step_fails_the_models_runs_and_is_tried_again(tmp_path: Path, workers: WorkerPool) -> None:
    loaded = load_config(write_config(tmp_path / "perfguard.toml",
                                      [tiny_model("m", prepare="workloads:prepare_fails", batch_sizes=[4, 8]),
                                       tiny_model("other")]))
    prepared: set[str] = set()
    with Database.open(loaded.storage_url()) as db:
        records = benchmark_models(loaded, db, prepared=prepared, pool=workers)
    assert [(r.model, r.status) for r in records] == [("m", "failed"), ("m", "failed"), ("other", "ok")]
    assert "prepare step workloads:prepare_fails failed" in records[0].error
    assert "the dataset server is down" in records[0].error
    assert records[0].details["prepare"]["status"] == "failed" and "prepare" not in records[1].details
    assert prepared == set()  # not marked done: the next run tries again
