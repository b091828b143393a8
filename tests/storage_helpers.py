"""The one run record the storage tests build, on every backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from monitor.core.runs import (
    FLAG_CONTENDED,
    FLAG_UNSTABLE,
    EnvFingerprint,
    HostCondition,
    RunMetrics,
    RunRecord,
)
from storage.db import Database
from storage.queries import save_runs

T0 = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)


def full_record(model: str = "seed-cnn", *, minute: int = 0, batch_size: int = 32) -> RunRecord:
    """A run with every field of every part filled, so that a lost or mangled field shows in a comparison.

    Starts `minute` minutes after T0; its median latency grows with `minute` too, so that series and
    their order can be told apart by value.
    """
    started = T0 + timedelta(minutes=minute)
    return RunRecord(
        model=model,
        variant="baseline",
        device="cpu",
        batch_size=batch_size,
        status="ok",
        started_at=started,
        finished_at=started + timedelta(seconds=4, microseconds=250),
        metrics=RunMetrics(
            latency_ms_p50=0.41 + minute / 1000, latency_ms_p90=0.44, latency_ms_p99=0.52,
            latency_ms_mean=0.42, latency_ms_std=0.02, latency_ms_min=0.39, latency_ms_max=0.9,
            ci95_rel=0.004, samples=5, throughput_per_s=78000.0, peak_rss_mb=310.2,
            cuda_peak_mem_mb=1830.5, model_size_mb=0.61, params=152330, accuracy=0.975,
            gpu_util_pct=97.0, gpu_power_w=350.2, energy_j_per_inference=0.07,
        ),  # fmt: skip
        env=EnvFingerprint(
            torch="2.13.0+cpu", python="3.11.7", cpu="Xeon", cpu_count=2, cpu_flags=["avx512f", "amx"],
            gpu="NVIDIA H100", gpu_driver="570.1", cuda="12.8",
            threads=2, interop_threads=1, host="bench-1", platform="Linux",
            allocator={"MALLOC_MMAP_THRESHOLD_": "65536"},
        ),  # fmt: skip
        host=HostCondition(
            loadavg_1m=0.25, others_cpu_pct=3.5, cpu_freq_mhz=2600.0, contended_blocks=1,
            cpu_pressure_pct=1.25,
        ),  # fmt: skip
        flags=[FLAG_CONTENDED, FLAG_UNSTABLE],
        details={
            "warmup": {"iterations": 50, "settled": True}, "stop_reason": "ci_reached",
            "timer": "cuda_events", "note": "ünïcödé ✓",
        },  # fmt: skip
        samples_ms=[0.41, 0.4100000000000001, 0.39, 0.9, 1e-9],
    )


def saved(db: Database, records: Sequence[RunRecord]) -> list[RunRecord]:
    """Store the records; each as stored, with its run id (records are frozen: storing one does not
    change it)."""
    return [dataclasses.replace(r, run_id=i) for r, i in zip(records, save_runs(db, records), strict=True)]
