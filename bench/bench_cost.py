"""What does ±1 % cost? Harness wall time to reach its target against a fixed 1000-iteration loop.

For each model: the harness in a fresh worker (warm-up + sampling time, and the CI it reached), and a
fixed loop of 1000 timed iterations after 10 warm-up calls in a fresh process (its time and the CI of
its median two ways: the i.i.d. order-statistic CI, and the drift-aware CI over 50 ms blocks that the
harness uses, which needs at least 10 blocks to say anything: "inf" means the loop was too short to
see the host drift at all). Prints both, so the price of "known to ±1 %" is visible next to the
naive loop.

    .venv/bin/python bench/bench_cost.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from monitor.harness.protocol import (  # noqa: E402
    BenchmarkJob,
    InputTensor,
    SamplingSettings,
    Subject,
)
from monitor.harness.runner import run_worker, worker_environment  # noqa: E402

CASES = [
    ("small_mlp (b4)", "bench_models:small_mlp", [4, 256]),
    ("mlp (b32)", "monitor.examples.models:mlp", [32, 1024]),
    ("seed-cnn (b32)", "monitor.examples.models:seed_cnn", [32, 3, 32, 32]),
]

FIXED_LOOP = """
import json, sys, time, torch
sys.path[:0] = {paths!r}
from monitor.harness.sampling import block_ci_rel, ci_rel
import statistics
module, fn = {factory!r}.split(":")
model = getattr(__import__(module, fromlist=[fn]), fn)().eval()
torch.set_num_threads(2)
x = torch.randn({shape})
with torch.inference_mode():
    for _ in range(10):
        model(x)
    t0 = time.perf_counter()
    timings = []
    for _ in range(1000):
        s = time.perf_counter_ns(); model(x); timings.append(time.perf_counter_ns() - s)
    wall = time.perf_counter() - t0
per_block = max(1, round(0.05e9 / statistics.median(timings)))
blocks = [statistics.median(timings[i:i + per_block]) for i in range(0, len(timings), per_block)]
print(json.dumps({{"wall_s": wall, "ci95_rel": ci_rel(timings), "block_ci95_rel": block_ci_rel(timings, blocks)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time-s", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{'model':<16} {'harness s':>10} {'harness ±CI %':>14} {'samples':>8} {'1000-iter s':>12} "
          f"{'1000-iter ±CI % (iid)':>22} {'(blocks)':>9}")
    for label, factory, shape in CASES:
        job = BenchmarkJob(
            model=label,
            subjects=[Subject(label="baseline", factory=factory, inputs=[InputTensor(shape)])],
            batch_size=shape[0],
            threads=2,
            sampling=SamplingSettings(max_time_s=args.max_time_s),
            sys_path=[str(ROOT), str(BENCH)],
        )
        outcome = run_worker(job, timeout_s=300)
        if outcome.result is None:
            raise SystemExit(f"{label}: {outcome.error}")
        subject = outcome.result.subjects[0]
        spent = subject.details["warmup_s"] + subject.details["sampling_s"]
        script = FIXED_LOOP.format(paths=[str(ROOT), str(BENCH)], factory=factory, shape=shape)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env=worker_environment(2, True))
        fixed = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label:<16} {spent:10.2f} {subject.metrics.ci95_rel * 100:14.2f} {subject.metrics.samples:8d} "
              f"{fixed['wall_s']:12.2f} {fixed['ci95_rel'] * 100:22.2f} {fixed['block_ci95_rel'] * 100:9.2f}")


if __name__ == "__main__":
    main()
