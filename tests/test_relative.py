"""Relative runs for real: scheduled runs timed against the frozen reference in the same worker, with
the host-speed probe beside them; what happens when the reference cannot be timed; and causes found
by detection on real workers (a changed model, a changed math-library code path)."""

from __future__ import annotations

import dataclasses
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from monitor.config import LoadedConfig, load_config
from monitor.core.series import SeriesKey
from monitor.detection.attribution import ensure_references
from monitor.detection.check import check_models
from monitor.harness.host_probe import HostSpeedProbe
from monitor.harness.worker_pool import WorkerPool
from monitor.service.benchmark import benchmark_models
from storage import findings as store
from storage.db import Database
from storage.queries import history, save_runs
from tests.cli_helpers import TESTS_DIR, tiny_model, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timing]
KEY = SeriesKey("baseline", "cpu", 8)


@pytest.fixture(autouse=True)
def workloads_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # workers inherit it


def config(tmp_path: Path, name: str, db_url: str, **fields: object) -> LoadedConfig:
    return load_config(write_config(tmp_path / name, [tiny_model("m", **fields)], storage_url=db_url,
                                    extra="[detection]\nconfirm = false\n"))


def frozen_series(db: Database, loaded: LoadedConfig, workers: WorkerPool, key: SeriesKey = KEY) -> int:
    """Benchmark once (absolutely: no reference yet), then freeze the series' reference."""
    (first,) = benchmark_models(loaded, db, pool=workers)
    assert first.status == "ok", first.error
    assert first.details["measurement"] == {"basis": "absolute", "why": "no frozen reference of this series yet"}
    assert first.reference_id is None and first.metrics.rel_to_reference is None
    assert first.metrics.probe_blas_ms and first.metrics.probe_python_ms  # the probe runs from the first run on
    assert ensure_references(db, loaded, pool=workers) == [key]
    reference = store.latest_reference(db, "m", key)
    assert reference is not None and reference.artifact["check_path"] and reference.measured["probe_blas_ms"]
    return reference.id


def history_of(db: Database, loaded: LoadedConfig, workers: WorkerPool, runs: int = 3, replayed: int = 7) -> None:
    """`runs` real relative runs, then `replayed` copies of them stored just after each: detection
    needs ten runs at a level before it judges a change, and real workers take seconds each."""
    real = [benchmark_models(loaded, db, pool=workers)[0] for _ in range(runs)]
    assert all(r.details["measurement"]["basis"] == "relative" for r in real)
    copies = []
    for i in range(replayed):
        source = real[i % runs]
        offset = timedelta(milliseconds=1 + i)
        copies.append(dataclasses.replace(source, run_id=None, idempotency_key=None,  # other runs, not retries
                                          started_at=source.started_at + offset,
                                          finished_at=source.finished_at + offset))
    save_runs(db, copies)


def test_a_scheduled_run_is_timed_against_its_reference_and_the_probe(tmp_path: Path, db_url: str, workers: WorkerPool) -> None:
    # A second of budget: the ratio's interval needs 3 interleaved rounds (of ~50 ms), which 0.3 s,
    # less its warm-up, did not always leave on a loaded 2-core host.
    loaded = config(tmp_path, "c.toml", db_url, max_time_s=1.0)
    with Database.open(db_url) as db:
        reference_id = frozen_series(db, loaded, workers)
        (run,) = benchmark_models(loaded, db, pool=workers)
        (stored,) = history(db, "m", limit=1)
    assert run.status == "ok", run.error
    assert run.details["measurement"] == {"basis": "relative", "reference_id": reference_id}
    m = stored.metrics
    assert stored.reference_id == reference_id
    # The same module, eager and exported (a few tens of microseconds more per call): the ratio of
    # the two, measured round by round, with an interval around it.
    assert m.rel_to_reference == pytest.approx(m.latency_ms_p50 / m.reference_p50_ms, rel=0.3)
    assert m.rel_to_reference_low <= m.rel_to_reference <= m.rel_to_reference_high
    assert m.reference_p50_ms > 0 and m.rel_p99_to_reference > 0 and m.probe_blas_ms > 0 and m.probe_python_ms > 0
    assert stored.details["measurement"]["basis"] == "relative"


def test_a_reference_that_cannot_load_falls_back_and_says_so(tmp_path: Path, workers: WorkerPool) -> None:
    db_url = f"sqlite:///{tmp_path / 'perfguard.db'}"
    loaded = config(tmp_path, "c.toml", db_url)
    with Database.open(db_url) as db:
        reference_id = frozen_series(db, loaded, workers)
        artifact = Path(store.latest_reference(db, "m", KEY).artifact["path"])
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte changed
        artifact.write_bytes(bytes(data))
        (run,) = benchmark_models(loaded, db, pool=workers)
        assert run.status == "ok", run.error  # the model is still measured, absolutely
        measurement = run.details["measurement"]
        assert measurement["basis"] == "absolute" and measurement["reference_lost"]
        assert "does not match its recorded sha256" in measurement["why"]
        assert run.reference_id is None and run.metrics.rel_to_reference is None and run.metrics.probe_blas_ms
        lost = store.latest_reference(db, "m", KEY)
        assert lost.id == reference_id and lost.lost_at is not None and "sha256" in lost.lost_reason
        (later,) = benchmark_models(loaded, db, pool=workers)  # the lost copy is not tried again
        assert later.details["measurement"]["why"].startswith(f"reference {reference_id} lost: ")
        # A file damaged on disk, while no regression is open: the same model is frozen again (after a
        # library upgrade it is not: see the next test).
        assert ensure_references(db, loaded, pool=workers) == [KEY]
        fresh = store.latest_reference(db, "m", KEY)
        assert fresh.id != reference_id and fresh.lost_at is None and fresh.artifact
        (again,) = benchmark_models(loaded, db, pool=workers)
        assert again.details["measurement"] == {"basis": "relative", "reference_id": fresh.id}


def test_a_reference_that_no_longer_reproduces_its_output_is_lost(tmp_path: Path, workers: WorkerPool) -> None:
    """What a library upgrade can do: the copy loads, but computes something else now."""
    db_url = f"sqlite:///{tmp_path / 'perfguard.db'}"
    loaded = config(tmp_path, "c.toml", db_url)
    with Database.open(db_url) as db:
        frozen_series(db, loaded, workers)
        reference = store.latest_reference(db, "m", KEY)
        check = Path(reference.artifact["check_path"])
        saved = torch.load(check, weights_only=True)
        saved["outputs"] = saved["outputs"] * 1.5
        torch.save(saved, check)
        from monitor.harness.artifacts import sha256_of
        from storage.tables import ReferenceRow

        with check.open("rb") as handle, db.session() as session:
            row = session.get(ReferenceRow, reference.id)
            row.artifact = {**row.artifact, "check_sha256": sha256_of(handle)}
        (run,) = benchmark_models(loaded, db, pool=workers)
        assert ensure_references(db, loaded, pool=workers) == []  # kept lost until a baseline is accepted
    assert run.status == "ok" and run.details["measurement"]["reference_lost"]
    assert "no longer reproduces its frozen output" in run.details["measurement"]["why"]


def test_a_changed_model_is_found_on_the_relative_reading_as_the_models(tmp_path: Path, workers: WorkerPool) -> None:
    """The factory now builds a model that also spins 300 us per call: the frozen copy of the old one
    shows it in the ratio, whatever the host does meanwhile."""
    db_url = f"sqlite:///{tmp_path / 'perfguard.db'}"
    before = config(tmp_path, "before.toml", db_url)
    after = config(tmp_path, "after.toml", db_url, factory="workloads:busy_300us")
    with Database.open(db_url) as db:
        frozen_series(db, before, workers)
        history_of(db, before, workers)
        for _ in range(3):
            (run,) = benchmark_models(after, db, pool=workers)
            assert run.details["measurement"]["basis"] == "relative", run.details["measurement"]
        result = check_models(db, after, ["m"])
    (finding,) = [f for f in result.findings if f.metric == "latency_ms_p50" and f.verdict == "regression"]
    assert (finding.reading, finding.cause, finding.env_diff) == ("relative", "model", None)
    assert finding.rel_change > 1.0  # tens of microseconds became hundreds


def test_a_slower_math_library_path_is_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: WorkerPool) -> None:
    """The same model and config; the math library now runs its compatible (SSE2) code path, about
    2.5x slower for this matmul on one thread. The model and its copy slow down nearly alike, the
    probe does not: the reference over the probe shows it, cause environment, with the variable in
    the diff. (One thread fewer was tried first: on a 2-core host whose other core is busy that is
    no slower at all.) "Nearly": the eager model and its frozen copy need not take the same kernels,
    and one fresh-clone run saw their ratio move 4.3 %, just over the relative reading's 4 %; such a
    finding must blame the environment too, never the model."""
    db_url = f"sqlite:///{tmp_path / 'perfguard.db'}"
    loaded = config(tmp_path, "c.toml", db_url, factory="workloads:matmul", inputs=[{"shape": [256, 512]}],
                    max_time_s=0.5, threads=1)
    with Database.open(db_url) as db:
        frozen_series(db, loaded, workers, SeriesKey("baseline", "cpu", 256))
        history_of(db, loaded, workers)
        monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
        for _ in range(3):
            benchmark_models(loaded, db, pool=workers)
        result = check_models(db, loaded, ["m"])
        runs = history(db, "m", limit=3)
    assert all(r.env.math_env.get("MKL_CBWR") == "COMPATIBLE" for r in runs)
    seen = [(f.metric, f.reading, f.cause, f.rel_change) for f in result.findings]
    regressions = [f for f in result.findings if f.verdict == "regression" and f.metric == "latency_ms_p50"]
    (probed,) = [f for f in regressions if f.reading == "reference"]
    assert probed.cause == "environment", seen
    assert probed.env_diff == {"math_env.MKL_CBWR": [None, "COMPATIBLE"]}
    assert probed.rel_change > 0.5
    assert {f.reading for f in regressions} <= {"reference", "relative"}, seen
    for finding in [f for f in result.findings if f is not probed]:  # the same cause, and far smaller
        assert finding.cause == "environment" and abs(finding.rel_change) < probed.rel_change / 4, seen


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process (user + system), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a BLAS pool needs two cores to spin on one")
def test_the_probe_leaves_no_thread_spinning_beside_the_model() -> None:
    """Thread pools spin after a call; a probe that left one spinning would slow the model's next
    block. The probe's BLAS block runs on the calling thread only: no other thread of the process
    gets CPU time meanwhile. The control, numpy's default pool on the same product, does."""
    import numpy as np

    from monitor.harness.sampling import block_runner

    probe = HostSpeedProbe()
    (_, blas_block), _ = probe.runners()
    me = threading.get_native_id()

    def others_while(run: object, seconds: float = 0.6) -> tuple[float, float]:
        before = thread_cpu_s()
        deadline = __import__("time").monotonic() + seconds
        while __import__("time").monotonic() < deadline:
            run(200)  # type: ignore[operator]
        after = thread_cpu_s()
        others = sum(after[t] - before.get(t, 0.0) for t in after if t != me)
        return after[me] - before[me], others

    mine, others = others_while(blas_block)
    assert mine > 0.4 and others < 0.1 * mine, (mine, others)
    a = np.ones((probe_size := 128, probe_size), dtype=np.float32)
    _, spun = others_while(block_runner(lambda: np.matmul(a, a)))
    assert spun > 0.2, "the control should have shown a spinning pool; the check would prove nothing"
