"""Does the harness read what a bare loop reads? Harness p50 against a bare perf_counter loop.

For each module the script alternates, `--rounds` times: a bare loop and a full harness run, each in
a fresh process with the same environment (threads, allocator settings) and `inference_mode`. The
bare loop is timeit-style: `perf_counter` around chunks of calls, divided, and the median over the
chunks (a mean over one long loop would count every interrupt of the host in). It prints the medians
and their ratio. Targets: the 200 us busy-wait within 1 % of the bare loop; harness / bare loop <=
1.02 on the ~50 us model.

    .venv/bin/python bench/bench_accuracy.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MODEL_PATHS = [str(BENCH), str(BENCH.parent / "tests")]
sys.path[:0] = MODEL_PATHS

from monitor.harness.protocol import (  # noqa: E402
    BenchmarkJob,
    InputTensor,
    SamplingSettings,
    Subject,
)
from monitor.harness.runner import run_worker, worker_environment  # noqa: E402

CASES = [("workloads:busy_200us", [1, 16]), ("bench_models:small_mlp", [4, 256])]


BARE_LOOP = """
import importlib, json, statistics, sys, time, torch
sys.path[:0] = {paths!r}
module, fn = {factory!r}.split(":")
torch.set_num_threads({threads})
model = getattr(importlib.import_module(module), fn)().eval()
x = torch.randn({shape})
with torch.inference_mode():
    for _ in range(200):
        model(x)
    means = []
    for _ in range({chunks}):
        t0 = time.perf_counter()
        for _ in range({chunk}):
            model(x)
        means.append((time.perf_counter() - t0) / {chunk})
print(json.dumps({{"us": statistics.median(means) * 1e6}}))
"""


def bare_loop_us(factory: str, shape: list[int], iters: int, threads: int) -> float:
    chunk = 10
    script = BARE_LOOP.format(paths=MODEL_PATHS, threads=threads, factory=factory, shape=shape,
                              chunks=max(1, iters // chunk), chunk=chunk)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env=worker_environment(threads, pin_allocator=True))
    return json.loads(done.stdout.strip().splitlines()[-1])["us"]


def harness_us(factory: str, shape: list[int], threads: int, max_time_s: float) -> float:
    job = BenchmarkJob(
        model=factory,
        subjects=[Subject(label="baseline", factory=factory, inputs=[InputTensor(shape)])],
        batch_size=shape[0],
        threads=threads,
        sampling=SamplingSettings(max_time_s=max_time_s),
        sys_path=MODEL_PATHS,
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
    print(f"{'model':<24} {'bare loop us':>13} {'harness p50 us':>15} {'ratio':>7}")
    for factory, shape in CASES:
        bare, harness = [], []
        for _ in range(args.rounds):
            bare.append(bare_loop_us(factory, shape, args.iters, args.threads))
            harness.append(harness_us(factory, shape, args.threads, args.max_time_s))
        b, h = statistics.median(bare), statistics.median(harness)
        print(f"{factory:<24} {b:13.2f} {h:15.2f} {h / b:7.4f}")
        print(f"{'':<24} bare runs: {', '.join(f'{v:.1f}' for v in bare)}; "
              f"harness runs: {', '.join(f'{v:.1f}' for v in harness)}")


if __name__ == "__main__":
    main()
