"""Warm workers against fresh ones: what a run costs to start, and whether it measures the same.

For each model (the tiny Linear of the tests, the example MLP and the seed CNN), `--pairs` pairs of
runs, one worker spawned as a fresh interpreter and one forked from a WorkerPool's fork server, the
order alternating pair by pair so that host drift hits both alike. Per model it prints:
- wall time of the whole run (start, warm-up, sampling, exit) and the worker's CPU time before its
  first sample (`started` event), median per kind, and their ratio;
- p50 latency forked / spawned: the median of per-pair ratios with its 95 % interval (bootstrap);
- peak RSS (MiB) per kind, and whether the environment fingerprint matches.

    python bench/warm_workers.py [--pairs 10] [--max-time 1.0]

Run it alone on the machine: it is a timing benchmark. Results: bench/RESULTS.md §15.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.harness.protocol import (  # noqa: E402
    BenchmarkJob,
    InputTensor,
    SamplingSettings,
    Subject,
)
from monitor.harness.runner import WorkerOutcome, run_worker  # noqa: E402
from monitor.harness.worker_pool import WorkerPool  # noqa: E402

MODELS = {
    "tiny": ("workloads:tiny", [4, 16], [str(ROOT / "tests")]),
    "mlp": ("monitor.examples.models:mlp", [32, 1024], []),
    "seed-cnn": ("monitor.examples.models:seed_cnn", [32, 3, 32, 32], []),  # trained and cached by its first run
}


def job(factory: str, shape: list[int], sys_path: list[str], max_time: float) -> BenchmarkJob:
    subject = Subject(label="baseline", factory=factory, inputs=[InputTensor(shape)])
    return BenchmarkJob(model=factory, subjects=[subject], batch_size=shape[0], threads=1, sys_path=sys_path,
                        sampling=SamplingSettings(max_time_s=max_time, min_samples=50))


def timed(run: BenchmarkJob, pool: WorkerPool | None) -> tuple[float, WorkerOutcome]:
    start = time.perf_counter()
    outcome = run_worker(run, timeout_s=300, cwd=ROOT, pool=pool)
    if outcome.status != "ok" or outcome.result is None:
        raise SystemExit(f"{run.model}: {outcome.status}: {outcome.error}")
    return time.perf_counter() - start, outcome


def interval(ratios: list[float], draws: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(draws, len(ratios))), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--max-time", type=float, default=1.0)
    args = parser.parse_args()
    print(f"host: {platform.processor() or platform.machine()}, {_cpu()}; pairs {args.pairs}, "
          f"max_time_s {args.max_time}")
    print("| model | run wall, spawned | run wall, forked | ratio | p50 forked/spawned [95 % CI] "
          "| peak RSS spawned / forked (MiB) | env equal |")
    print("|---|---|---|---|---|---|---|")
    with WorkerPool() as pool:
        for name, (factory, shape, sys_path) in MODELS.items():
            run = job(factory, shape, sys_path, args.max_time)
            timed(run, pool)  # the fork server starts once, outside the figures
            walls: dict[str, list[float]] = {"spawn": [], "fork": []}
            p50: dict[str, list[float]] = {"spawn": [], "fork": []}
            peaks: dict[str, list[float]] = {"spawn": [], "fork": []}
            envs = set()
            for index in range(args.pairs):
                order = ("spawn", "fork") if index % 2 == 0 else ("fork", "spawn")
                for kind in order:
                    wall, outcome = timed(run, pool if kind == "fork" else None)
                    assert outcome.result is not None
                    metrics = outcome.result.subjects[0].metrics
                    walls[kind].append(wall)
                    p50[kind].append(metrics.latency_ms_p50 or 0.0)
                    peaks[kind].append(metrics.peak_rss_mb or 0.0)
                    env = outcome.result.env.to_dict()
                    envs.add(str(sorted((k, str(v)) for k, v in env.items())))
            ratios = [f / s for f, s in zip(p50["fork"], p50["spawn"], strict=True)]
            low, high = interval(ratios)
            spawn_wall, fork_wall = statistics.median(walls["spawn"]), statistics.median(walls["fork"])
            print(f"| {name} | {spawn_wall:.2f} s | {fork_wall:.2f} s | {spawn_wall / fork_wall:.2f}x "
                  f"| {statistics.median(ratios):.3f} [{low:.3f}, {high:.3f}] "
                  f"| {statistics.median(peaks['spawn']):.1f} / {statistics.median(peaks['fork']):.1f} "
                  f"| {'yes' if len(envs) == 1 else 'NO'} |")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
