"""Warm workers (worker_pool.py, forkserver.py): a worker forked from a fork server starts as a
spawned one would, ends in every way a spawned one can, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from monitor.harness import worker_pool
from monitor.harness.protocol import (
    BenchmarkJob,
    InputTensor,
    SamplingSettings,
    Subject,
)
from monitor.harness.runner import ALLOCATOR_PINS, run_worker
from monitor.harness.worker_pool import WorkerPool
from tests.process_helpers import alive, pid_written, wait_gone

TESTS = Path(__file__).parent
QUICK = SamplingSettings(max_time_s=0.3, min_samples=20)
# 64 MB a call: a budget long enough to pass a memory limit however slow the host (the kill ends it).
HOG_BUDGET = SamplingSettings(max_time_s=10, min_samples=20)


def job(factory: str, **kw) -> BenchmarkJob:
    subject = Subject(label="baseline", factory=f"workloads:{factory}", inputs=[InputTensor([4, 16])])
    return BenchmarkJob(model=factory, subjects=[subject], batch_size=4, sampling=kw.pop("sampling", QUICK),
                        sys_path=[str(TESTS)], **kw)


def _servers(pool: WorkerPool) -> list[int]:
    return [server.process.pid for server in pool._servers.values()]


@pytest.fixture(scope="module")
def pool():
    with WorkerPool() as shared:
        yield shared


@pytest.mark.parametrize("threads", [1, 2])
def test_a_forked_worker_starts_as_a_spawned_one_would(pool, threads):
    """Same threads, allocator pins, math environment and torch as a fresh interpreter; peak memory
    read the same way (VmHWM) lands close to a spawned worker's."""
    spawned = run_worker(job("tiny", threads=threads), timeout_s=60)
    before = pool.forked
    forked = [run_worker(job("tiny", threads=threads), timeout_s=60, pool=pool) for _ in range(2)]
    assert pool.forked == before + 2
    for outcome in [spawned, *forked]:
        assert outcome.status == "ok", outcome.error
    fresh = spawned.result.env
    for outcome in forked:
        env = outcome.result.env
        assert (env.threads, env.interop_threads) == (fresh.threads, fresh.interop_threads) == (threads, 1)
        assert env.allocator == fresh.allocator == ALLOCATOR_PINS
        assert env.math_env == fresh.math_env and env.math_env["OMP_NUM_THREADS"] == str(threads)
        assert (env.torch, env.python, env.cpu_capability) == (fresh.torch, fresh.python, fresh.cpu_capability)
        peak = outcome.result.subjects[0].metrics.peak_rss_mb
        fresh_peak = spawned.result.subjects[0].metrics.peak_rss_mb
        assert 0.95 < peak / fresh_peak < 1.05, (peak, fresh_peak)
    assert forked[0].pid != forked[1].pid


def test_one_fork_server_serves_each_environment_and_a_run_leaves_no_state_behind(pool, monkeypatch):
    monkeypatch.setenv("PERFGUARD_TEST_SETTING", "a")
    started = pool.started
    first = run_worker(job("leaves_state"), timeout_s=60, pool=pool)
    second = run_worker(job("tiny"), timeout_s=60, pool=pool)
    assert pool.started == started + 1  # one server for this environment, forked twice
    assert first.status == second.status == "ok", (first.error, second.error)
    assert first.result.env.math_env.get("OMP_PERFGUARD_LEAK") is None  # read before the model ran
    assert "OMP_PERFGUARD_LEAK" not in second.result.env.math_env  # the first run's process is gone
    assert second.result.env.threads == first.result.env.threads
    monkeypatch.setenv("PERFGUARD_TEST_SETTING", "b")
    assert run_worker(job("tiny"), timeout_s=60, pool=pool).status == "ok"
    assert pool.started == started + 2  # another environment, another server


@pytest.mark.parametrize(
    ("factory", "needle"),
    [("raises", "RuntimeError: this model is broken on purpose"), ("abort", "worker killed by SIGABRT")],
)
def test_a_forked_worker_that_fails_or_crashes_is_reported_like_a_spawned_one(pool, factory, needle):
    outcome = run_worker(job(factory), timeout_s=60, pool=pool)
    assert outcome.status == "failed" and needle in outcome.error, outcome.error
    assert outcome.result is None and outcome.env is not None and outcome.env.torch


def test_a_forked_worker_past_its_limits_is_killed_with_what_it_started(pool, tmp_path, monkeypatch):
    hog = run_worker(job("hog", sampling=HOG_BUDGET), timeout_s=60, memory_limit_mb=600, pool=pool)
    assert hog.status == "failed" and "memory limit exceeded" in hog.error, hog.error
    assert hog.peak_rss_mb > 600 and not alive(hog.pid)
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("PERFGUARD_TEST_CHILD_PID_FILE", str(pid_file))
    hung = run_worker(job("spawns_child"), timeout_s=5, pool=pool)
    assert hung.status == "timeout", hung.error
    assert wait_gone([hung.pid, int(pid_file.read_text())]) == []
    detached = run_worker(job("spawns_detached"), timeout_s=60, pool=pool)
    assert detached.status == "ok", detached.error
    assert wait_gone([int(pid_file.read_text())]) == [], "a child in a session of its own outlived its worker"


def test_a_killed_owner_takes_its_fork_server_and_workers_with_it(tmp_path, monkeypatch):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("PERFGUARD_TEST_CHILD_PID_FILE", str(pid_file))
    owner_script = textwrap.dedent(f"""
        from monitor.harness.protocol import BenchmarkJob, InputTensor, Subject
        from monitor.harness.runner import run_worker
        from monitor.harness.worker_pool import WorkerPool
        subject = Subject(label="baseline", factory="workloads:spawns_child", inputs=[InputTensor([4, 16])])
        run_worker(BenchmarkJob(model="x", subjects=[subject], batch_size=4, sys_path=[{str(TESTS)!r}]),
                   timeout_s=600, pool=WorkerPool())
    """)
    owner = subprocess.Popen([sys.executable, "-c", owner_script])
    child = pid_written(pid_file)
    worker = psutil.Process(child).ppid()
    server = psutil.Process(worker).ppid()
    assert psutil.Process(server).ppid() == owner.pid  # owner -> fork server -> worker -> its child
    assert (psutil.Process(server).name(), psutil.Process(worker).name()) == ("perfguard-fork", "perfguard-work")
    owner.kill()
    owner.wait()
    assert wait_gone([server, worker, child]) == [], "a fork server or its worker outlived its owner"


def test_an_install_retires_the_fork_servers_started_before_it(tmp_path):
    site = tmp_path / "site-packages"
    site.mkdir()
    with WorkerPool(watched_paths=[str(site)]) as own:
        assert run_worker(job("tiny"), timeout_s=60, pool=own).status == "ok"
        [before] = _servers(own)
        (site / "newpkg-1.0.dist-info").mkdir()  # what pip does on every install or upgrade
        os.utime(site, ns=(time.time_ns() + 10**9,) * 2)  # coarse file-system clocks: a sure change
        assert run_worker(job("tiny"), timeout_s=60, pool=own).status == "ok"
        assert own.started == 2 and before not in _servers(own)
        assert wait_gone([before]) == []
        [after] = _servers(own)
    assert wait_gone([after]) == [], "closing the pool leaves no fork server"


def test_a_fork_server_that_cannot_start_falls_back_to_a_fresh_worker(monkeypatch, caplog):
    monkeypatch.setattr(worker_pool, "START_TIMEOUT_S", 0.01)  # no interpreter imports torch that fast
    with WorkerPool() as own:
        outcome = run_worker(job("tiny"), timeout_s=60, pool=own)
    assert outcome.status == "ok", outcome.error
    assert own.forked == 0 and "starting a fresh worker instead" in caplog.text


def test_one_fork_server_serves_every_folder_and_each_worker_imports_from_its_own(pool, tmp_path):
    """A model's module is found in its config's folder (sys.path[0] of `python -m` started there):
    each forked worker moves to its own folder first, so one server serves them all."""
    for folder, width in (("a", 3), ("b", 5)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "local_model.py").write_text(
            f"import torch\n\ndef build():\n    return torch.nn.Linear(16, {width})\n")
    started = pool.started
    params = []
    for folder in ("a", "b"):
        subject = Subject(label="baseline", factory="local_model:build", inputs=[InputTensor([4, 16])])
        outcome = run_worker(BenchmarkJob(model="m", subjects=[subject], batch_size=4, sampling=QUICK),
                             timeout_s=60, cwd=tmp_path / folder, pool=pool)
        assert outcome.status == "ok", outcome.error
        params.append(outcome.result.subjects[0].metrics.params)
    assert params == [16 * 3 + 3, 16 * 5 + 5]
    assert pool.started <= started + 1


def test_a_relative_pythonpath_keeps_a_server_per_folder():
    assert worker_pool.server_folder({"PYTHONPATH": "/opt/models"}, "/srv/a") == ""
    assert worker_pool.server_folder({"PYTHONPATH": "/opt/models:lib"}, "/srv/a") == "/srv/a"
    assert worker_pool.server_folder({}, "/srv/a") == ""


def test_a_worker_that_dies_before_reading_its_job_is_reported(pool, tmp_path):
    """Its exit status arrives right behind its pid; the folder it should run in is gone."""
    gone = tmp_path / "gone"
    gone.mkdir()
    subject = Subject(label="baseline", factory="workloads:tiny", inputs=[InputTensor([4, 16])])
    work = BenchmarkJob(model="m", subjects=[subject], batch_size=4, sampling=QUICK, sys_path=[str(TESTS)])
    gone.rmdir()
    outcome = run_worker(work, timeout_s=30, cwd=gone, pool=pool)
    assert outcome.status == "failed" and "FileNotFoundError" in outcome.error, outcome.error
    assert pool.forked > 0
