"""Does the harness read what a bare loop reads? Harness p50 against a bare perf_counter loop.

For each module the script alternates, `--rounds` times: a bare loop in this process
(`perf_counter` around `--iters` calls, divided) and a full harness run in a fresh worker, both with
the same thread count and `inference_mode`. It prints the medians and their ratio. Targets: the 200 us
busy-wait within 1 % of the bare loop; harness / bare loop <= 1.02 on the ~50 us model.

    .venv/bin/python bench/bench_accuracy.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import workloads  # noqa: E402

from monitor.harness.protocol import BenchmarkJob, InputTensor, SamplingSettings, Subject  # noqa: E402
from monitor.harness.runner import run_worker  # noqa: E402

CASES = [("busy_200us", [1, 16]), ("small_mlp", [4, 256])]


def bare_loop_us(factory: str, shape: list[int], iters: int, threads: int) -> float:
    torch.set_num_threads(threads)
    model = getattr(workloads, factory)().eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        for _ in range(max(50, iters // 10)):
            model(x)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        return (time.perf_counter() - t0) / iters * 1e6


def harness_us(factory: str, shape: list[int], threads: int, max_time_s: float) -> float:
    job = BenchmarkJob(
        model=factory,
        subjects=[Subject(label="baseline", factory=f"workloads:{factory}", inputs=[InputTensor(shape)])],
        batch_size=shape[0],
        threads=threads,
        sampling=SamplingSettings(max_time_s=max_time_s),
        sys_path=[str(BENCH)],
    )
    outcome = run_worker(job, timeout_s=120)
    if outcome.result is None:
        raise SystemExit(f"harness run failed: {outcome.error}")
    return outcome.result.subjects[0].metrics.latency_ms_p50 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-time-s", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{'model':<12} {'bare loop us':>13} {'harness p50 us':>15} {'ratio':>7}")
    for factory, shape in CASES:
        bare, harness = [], []
        for _ in range(args.rounds):
            bare.append(bare_loop_us(factory, shape, args.iters, args.threads))
            harness.append(harness_us(factory, shape, args.threads, args.max_time_s))
        b, h = statistics.median(bare), statistics.median(harness)
        print(f"{factory:<12} {b:13.2f} {h:15.2f} {h / b:7.4f}")
        print(f"{'':<12} bare runs: {', '.join(f'{v:.1f}' for v in bare)}; "
              f"harness runs: {', '.join(f'{v:.1f}' for v in harness)}")


if __name__ == "__main__":
    main()
