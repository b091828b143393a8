"""The isolated worker end to end: real torch models, real subprocesses, every way a worker can end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from monitor.config import load_config
from monitor.harness import runner
from monitor.harness.protocol import (
    InputTensor,
    SamplingSettings,
    Subject,
    WorkerJob,
    make_job,
)
from monitor.harness.runner import ALLOCATOR_PINS, run_worker, to_records
from monitor.harness.worker import DeviceUnavailable, _cuda_index
from monitor.service.benchmark import benchmark_models
from storage import queries
from storage.db import Database
from tests.process_helpers import alive, pid_written, wait_gone

TESTS = Path(__file__).parent
QUICK = SamplingSettings(max_time_s=0.5, min_samples=20)
# 64 MB a call: a budget long enough to pass a memory limit however slow the host (the kill ends it).
HOG_BUDGET = SamplingSettings(max_time_s=10, min_samples=20)


def job(factory: str, *, mode: str = "single", subjects: list[Subject] | None = None, **kw) -> WorkerJob:
    subjects = subjects or [Subject(label="baseline", factory=f"workloads:{factory}", inputs=[InputTensor([4, 16])])]
    return make_job(
        mode, model=factory, subjects=subjects, batch_size=4, sampling=kw.pop("sampling", QUICK),
        sys_path=[str(TESTS)], **kw,
    )


def test_a_scheduled_run_of_several_subjects_keeps_their_comparison():
    subjects = [Subject(label=name, factory="workloads:tiny", inputs=[InputTensor([4, 16])]) for name in ("a", "b")]
    two = job("tiny", subjects=subjects, threads=1)
    outcome = run_worker(two, timeout_s=60)
    assert outcome.status == "ok" and outcome.result is not None, outcome.error
    assert list(outcome.result.comparison or {}) == ["b"]
    records = to_records(two, outcome, "baseline")
    assert [r.details["comparison"] == outcome.result.comparison for r in records] == [True, True]


def test_a_tiny_model_is_measured_with_all_cpu_metrics():
    outcome = run_worker(job("tiny", threads=1), timeout_s=60)
    assert outcome.status == "ok", outcome.error
    [record] = to_records(job("tiny"), outcome, "baseline")
    m = record.metrics
    assert 0 < m.latency_ms_min <= m.latency_ms_p50 <= m.latency_ms_p90 <= m.latency_ms_p99 <= m.latency_ms_max
    assert m.samples == len(record.samples_ms) >= 20
    assert m.throughput_per_s == pytest.approx(4 / (m.latency_ms_p50 / 1000))
    assert m.params == 16 * 4 + 4
    assert m.model_size_mb > 0
    assert m.peak_rss_mb > 50  # torch alone is bigger than that
    assert m.cuda_peak_mem_mb is None and m.energy_j_per_inference is None
    assert record.env.threads == 1 and record.env.interop_threads == 1
    assert record.env.torch and record.env.python and record.env.host
    assert record.env.allocator == ALLOCATOR_PINS
    assert record.host.loadavg_1m is not None and record.host.others_cpu_pct is not None
    assert record.details["warmup_iterations"] > 0
    assert record.details["stop_reason"] in ("ci", "budget")


def test_the_allocator_is_left_alone_when_pinning_is_off(monkeypatch):
    for name in ALLOCATOR_PINS:
        monkeypatch.delenv(name, raising=False)
    outcome = run_worker(job("tiny"), timeout_s=60, pin_allocator=False)
    assert outcome.status == "ok", outcome.error
    assert outcome.result.env.allocator == {}


def test_inputs_factory_and_eval_give_accuracy():
    subject = Subject(label="baseline", factory="workloads:tiny", inputs_factory="workloads:tiny_inputs",
                      eval="workloads:tiny_eval")
    outcome = run_worker(job("tiny", subjects=[subject]), timeout_s=60)
    assert outcome.status == "ok", outcome.error
    assert outcome.result.subjects[0].metrics.accuracy == 0.5


@pytest.mark.parametrize(
    ("factory", "status", "needle"),
    [
        ("raises", "failed", "RuntimeError: this model is broken on purpose"),
        ("abort", "failed", "SIGABRT"),
        ("not_a_model", "failed", "not a torch.nn.Module"),
        ("no_such_function", "failed", "AttributeError"),
    ],
)
def test_a_broken_model_ends_as_a_failed_run_with_its_error(factory, status, needle):
    outcome = run_worker(job(factory), timeout_s=60)
    assert outcome.status == status
    assert needle in outcome.error
    [record] = to_records(job(factory), outcome, "baseline")
    assert record.status == status and record.error == outcome.error
    assert record.env.torch  # the worker reported its environment before the model ran


def test_an_import_error_names_the_module():
    subject = Subject(label="baseline", factory="no_such_module_xyz:build", inputs=[InputTensor([1, 1])])
    outcome = run_worker(job("x", subjects=[subject]), timeout_s=60)
    assert outcome.status == "failed"
    assert "ModuleNotFoundError" in outcome.error and "no_such_module_xyz" in outcome.error


def test_a_gpu_this_torch_cannot_use_fails_the_run_naming_the_device_and_why():
    """No CI host has eight GPUs: a CPU-only torch says it is one, a CUDA build how many it sees.
    Torch's own failure on a CPU-only build named a private function (`_cuda_setDevice`)."""
    outcome = run_worker(job("tiny", device="cuda:7"), timeout_s=60)
    assert outcome.status == "failed"
    first = outcome.error.splitlines()[0]
    assert first.startswith("DeviceUnavailable: device 'cuda:7': torch "), outcome.error
    assert "is a CPU-only build" in first or "CUDA device(s) here" in first, first
    [record] = to_records(job("tiny", device="cuda:7"), outcome, "baseline")
    assert record.env.torch  # the environment, reported first, says which torch it was


def test_a_cuda_build_that_sees_fewer_gpus_than_asked_says_how_many(monkeypatch):
    """A CUDA build of torch with one visible GPU (a stand-in for it: this host's torch has none)."""
    one_gpu = SimpleNamespace(__version__="2.11.0+cu130", version=SimpleNamespace(cuda="13.0"),
                              cuda=SimpleNamespace(device_count=lambda: 1))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert _cuda_index(one_gpu, "cuda") == 0 and _cuda_index(one_gpu, "cuda:0") == 0
    with pytest.raises(DeviceUnavailable, match=r"^device 'cuda:1': torch 2.11.0\+cu130 sees 1 CUDA device\(s\) "
                                                r"here \(CUDA_VISIBLE_DEVICES=3\)$"):
        _cuda_index(one_gpu, "cuda:1")


def test_a_hanging_model_times_out_and_leaves_no_process_behind(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("PERFGUARD_TEST_CHILD_PID_FILE", str(pid_file))
    start = time.monotonic()
    outcome = run_worker(job("spawns_child"), timeout_s=8)
    assert outcome.status == "timeout"
    assert "timed out after 8 s" in outcome.error
    assert time.monotonic() - start < 20
    for pid in (outcome.pid, int(pid_file.read_text())):
        assert not alive(pid), f"process {pid} outlived the runner"


def test_a_process_started_in_a_new_session_does_not_outlive_its_worker(tmp_path, monkeypatch):
    """Killing the worker's process group misses a child that called setsid; the runner tracks the
    worker's descendants while it runs and kills what is left."""
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("PERFGUARD_TEST_CHILD_PID_FILE", str(pid_file))
    outcome = run_worker(job("spawns_detached", sampling=QUICK), timeout_s=60)
    assert outcome.status == "ok", outcome.error
    child = int(pid_file.read_text())
    assert wait_gone([child], 5) == [], "the detached child outlived its worker"


def test_a_worker_does_not_outlive_a_killed_runner(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("PERFGUARD_TEST_CHILD_PID_FILE", str(pid_file))
    runner_script = textwrap.dedent(f"""
        from monitor.harness.protocol import BenchmarkJob, InputTensor, SamplingSettings, Subject
        from monitor.harness.runner import run_worker
        subject = Subject(label="baseline", factory="workloads:spawns_child", inputs=[InputTensor([4, 16])])
        run_worker(BenchmarkJob(model="x", subjects=[subject], batch_size=4, sys_path=[{str(TESTS)!r}]),
                   timeout_s=600)
    """)
    runner = subprocess.Popen([sys.executable, "-c", runner_script])
    child = pid_written(pid_file)
    worker = psutil.Process(child).ppid()
    assert worker != runner.pid and psutil.Process(worker).ppid() == runner.pid
    runner.kill()
    runner.wait()
    left = wait_gone([worker, child])
    assert worker not in left, "the worker outlived its runner"
    assert child not in left, "the worker's child outlived the runner"


def test_exceeding_the_memory_limit_kills_the_worker():
    outcome = run_worker(job("hog", sampling=HOG_BUDGET), timeout_s=60, memory_limit_mb=600)
    assert outcome.status == "failed"
    assert "memory limit exceeded" in outcome.error and "memory_limit_mb=600" in outcome.error
    assert outcome.peak_rss_mb > 600
    assert not alive(outcome.pid)


def test_a_model_without_a_memory_limit_gets_the_hosts_default(monkeypatch):
    """Without memory_limit_mb a worker may take DEFAULT_MEMORY_SHARE of the host's memory (70 %): a
    factory that allocates without bound fails its run instead of taking the host down. The share is
    lowered here to about 600 MB, so that the test does not fill the machine to show it."""
    monkeypatch.setattr(runner, "DEFAULT_MEMORY_SHARE", 600 * 2**20 / psutil.virtual_memory().total)
    outcome = run_worker(job("hog", sampling=HOG_BUDGET), timeout_s=60)
    assert outcome.status == "failed" and "memory limit exceeded" in outcome.error, outcome.error
    assert outcome.peak_rss_mb > 550
    assert not alive(outcome.pid)


@pytest.mark.timing
def test_ab_mode_times_two_models_of_known_cost_interleaved():
    subjects = [
        Subject(label="current", factory="workloads:busy_100us", inputs=[InputTensor([4, 16])]),
        Subject(label="candidate", factory="workloads:busy_300us", inputs=[InputTensor([4, 16])]),
    ]
    ab = job("ab", mode="ab", subjects=subjects, sampling=SamplingSettings(max_time_s=3, min_samples=50))
    outcome = run_worker(ab, timeout_s=60)
    assert outcome.status == "ok", outcome.error
    current, candidate = to_records(ab, outcome, "baseline")
    assert (current.variant, candidate.variant) == ("current", "candidate")
    # Each spins a known time plus the same small Linear and call overhead (tens of us on a slow or
    # busy host): a spin never runs short, and the overhead cancels in the difference.
    fast, slow = current.metrics.latency_ms_p50, candidate.metrics.latency_ms_p50
    assert fast >= 0.1 and slow >= 0.3
    assert slow - fast == pytest.approx(0.2, rel=0.15)
    ratio = outcome.result.comparison["candidate"]
    assert ratio["ratio_p50"] == pytest.approx(slow / fast, rel=0.05)
    assert ratio["rounds"] >= 10
    lo, hi = ratio["ratio_ci95"]
    assert lo <= ratio["ratio_p50"] <= hi and hi / lo < 1.2


def test_one_broken_model_does_not_stop_the_others(tmp_path, workers):
    """Through the service, as the daemon and the CLI run it: workers forked from their pool."""
    models = "".join(
        textwrap.dedent(f"""
        [[models]]
        name = "{name}"
        factory = "workloads:{factory}"
        inputs = [{{ shape = [4, 16] }}]
        max_time_s = {budget}
        timeout_s = {timeout}
        {extra}
        """)
        for name, factory, budget, timeout, extra in [
            ("good-1", "tiny", 0.3, 60, ""),
            ("raises", "raises", 0.3, 60, ""),
            ("aborts", "abort", 0.3, 60, ""),
            ("hangs", "hang", 0.3, 6, ""),
            # 64 MB a call: a budget long enough to pass the limit however slow the host (the kill ends it).
            ("hog", "hog", 10, 60, "memory_limit_mb = 600"),
            ("good-2", "tiny", 0.3, 60, "batch_sizes = [2, 8]"),
        ]
    )
    config = tmp_path / "perfguard.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///runs.db"\n[harness]\nmin_samples = 20\n{models}')
    (tmp_path / "workloads.py").symlink_to(TESTS / "workloads.py")
    loaded = load_config(config)
    with Database.open(loaded.storage_url()) as db:
        records = benchmark_models(loaded, db, pool=workers)
        statuses = {(r.model, r.batch_size): r.status for r in records}
        assert statuses == {
            ("good-1", 4): "ok", ("raises", 4): "failed", ("aborts", 4): "failed",
            ("hangs", 4): "timeout", ("hog", 4): "failed", ("good-2", 2): "ok", ("good-2", 8): "ok",
        }
        stored = {r.model: r for name in ("raises", "hangs", "hog") for r in queries.history(db, name)}
        assert "broken on purpose" in stored["raises"].error
        assert stored["hangs"].status == "timeout"
        assert "memory limit" in stored["hog"].error
        good = queries.history(db, "good-2", with_samples=True)
        assert {r.batch_size for r in good} == {2, 8}
        assert all(len(r.samples_ms) == r.metrics.samples for r in good)
    assert (tmp_path / "runs.db").exists()


def test_the_parent_never_imports_torch(tmp_path):
    (tmp_path / "workloads.py").symlink_to(TESTS / "workloads.py")
    (tmp_path / "perfguard.toml").write_text(textwrap.dedent("""
        [storage]
        url = "sqlite:///runs.db"
        [harness]
        min_samples = 20
        [[models]]
        name = "tiny"
        factory = "workloads:tiny"
        inputs = [{ shape = [4, 16] }]
        max_time_s = 0.3
    """))
    script = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from monitor.cli import main
        result = CliRunner().invoke(main, ["run", "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "torch" not in sys.modules, "the parent imported torch"
        print("clean")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("clean")
