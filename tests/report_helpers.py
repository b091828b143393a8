"""Stored histories for the report and email tests: real runs, detection and actions in a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import LoadedConfig, load_config
from monitor.core.actions import ActionRecord, Verdict
from monitor.core.runs import EnvFingerprint, HostCondition, RunMetrics, RunRecord
from monitor.detection.check import check_models
from storage.actions import record_action
from storage.db import Database
from tests.cli_helpers import tiny_model, write_config
from tests.storage_helpers import saved

START = datetime(2026, 11, 1, 0, 0, tzinfo=UTC)


def history_runs(
    model: str, count: int, *, step_at: int | None = None, step: float = 1.25, failed: tuple[int, ...] = (),
    torch_change_at: int | None = None, batch_size: int = 8, level: float = 1.0, seed: int = 0,
    start: datetime = START, accuracy: bool = True,
) -> list[RunRecord]:
    """`count` runs ten minutes apart: latency at `level` ms with 1 % noise, times `step` from `step_at`;
    the runs at `failed` indexes fail; torch changes version at `torch_change_at`."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(count):
        started = start + timedelta(minutes=10 * i)
        p50 = level * (step if step_at is not None and i >= step_at else 1.0) * (1 + 0.01 * rng.standard_normal())
        ok = i not in failed
        torch = "2.13.0+cpu" if torch_change_at is not None and i >= torch_change_at else "2.12.1+cpu"
        runs.append(RunRecord(
            model=model, variant="baseline", device="cpu", batch_size=batch_size, status="ok" if ok else "failed",
            error=None if ok else "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: out of memory",
            started_at=started, finished_at=started + timedelta(seconds=3),
            metrics=RunMetrics(
                latency_ms_p50=p50, latency_ms_p90=p50 * 1.05, latency_ms_p99=p50 * 1.2, samples=500,
                throughput_per_s=batch_size * 1000 / p50, peak_rss_mb=300 + 0.01 * i, model_size_mb=0.6,
                accuracy=0.97 if accuracy else None, ci95_rel=0.004,
            ) if ok else RunMetrics(),
            env=EnvFingerprint(torch=torch, threads=2, host="bench-1"), host=HostCondition(),
            flags=[], details={}, samples_ms=[],
        ))
    return runs


def report_config(tmp_path: Path, models: list[dict[str, Any]], extra: str = "") -> LoadedConfig:
    """A config of cheap models storing into tmp_path/perfguard.db, reports under tmp_path/site."""
    extra = "[detection]\nconfirm = false\n\n[reports]\nout_dir = \"site\"\nworkers = 1\n" + extra
    return load_config(write_config(tmp_path / "perfguard.toml", [tiny_model(**m) for m in models], extra=extra,
                                    storage_url=f"sqlite:///{tmp_path / 'perfguard.db'}"))


def seed(db: Database, loaded: LoadedConfig, runs: list[RunRecord]) -> list[RunRecord]:
    """Store the runs and run detection over them, as the daemon would; the runs as stored."""
    stored = saved(db, runs)
    check_models(db, loaded)
    return stored


def rejected_action(db: Database, model: str, finding_id: int | None = None, recipe: str = "dynamic_int8") -> ActionRecord:
    """A recorded requantize action whose one candidate was refused, with its numbers."""
    candidate = {
        "label": recipe, "recipe": recipe, "p50_ms": 1.1, "current_p50_ms": 1.25,
        "speedup": 1.136, "size_mb": 0.2, "current_size_mb": 0.6, "forward_peak_mb": 3.0,
        "current_forward_peak_mb": 2.5, "accuracy": 0.90, "current_accuracy": 0.97, "accepted": False,
        "reasons": ["accuracy 0.9000 vs 0.9700: drop 0.0700 over the tolerance 0.01"],
    }
    record = ActionRecord(model=model, kind="requantize", trigger="latency_drift", status="rejected",
                          reason=f"no candidate was better: {recipe} refused", from_variant="baseline",
                          finding_id=finding_id, candidates=[Verdict.from_dict(candidate)])
    return record_action(db, record)


def make_fleet(tmp_path: Path, extra: str = "") -> tuple[LoadedConfig, Database]:
    """Three models: seed-cnn regressed (with a rejected action), mlp healthy, broken whose runs all failed."""
    from storage import findings as findings_store

    loaded = report_config(tmp_path, [
        {"name": "seed-cnn", "owners": ["vision@example.com"], "slo": {"latency_ms_p99": 5.0}},
        {"name": "mlp", "owners": ["ranking@example.com"]},
        {"name": "broken", "owners": ["vision@example.com"]},
    ], extra=extra)
    db = Database.open(loaded.storage_url())
    runs = (history_runs("seed-cnn", 60, step_at=40, failed=(10,), torch_change_at=40, start=recent_start(60))
            + history_runs("mlp", 40, seed=1, start=recent_start(40))
            + history_runs("broken", 5, failed=(0, 1, 2, 3, 4), start=recent_start(5)))
    seed(db, loaded, runs)
    [finding] = [f for f in findings_store.findings(db, "seed-cnn", state="open") if f.metric == "latency_ms_p50"]
    rejected_action(db, "seed-cnn", finding.id)
    return loaded, db


def recent_start(count: int) -> datetime:
    """A start time such that `count` runs ten minutes apart end now (alerts look back a day)."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10 * count)
