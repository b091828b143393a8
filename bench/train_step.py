"""The training step of the seed CNN at batch 32: step time and samples/s, fp32 against bf16 autocast.

    .venv/bin/python bench/train_step.py
    .venv/bin/python bench/train_step.py --rounds 20 --json /tmp/train.json

Each variant is a full step (`monitor.harness.train_step.make_step`: forward, cross-entropy on the
held-out digits' labels' shape, backward, SGD step) of its own copy of the trained seed CNN on the same
batch, timed with the sampler's block runner, interleaved round by round in a rotating order on 2
threads. The AMP candidate is judged by perfguard's speed rule: at least 10 % faster (the median of
the per-round ratios). Run it alone on the machine: the timings are the point.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from monitor.examples import models  # noqa: E402
from monitor.harness.sampling import block_runner, latency_metrics  # noqa: E402
from monitor.harness.train_step import TrainSpec, make_step  # noqa: E402

BATCH = 32
MIN_SPEEDUP = 0.10  # perfguard's default [optimize] min_speedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5, help="steps per variant per round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    trained = models.seed_cnn()
    images = models.seed_cnn_eval()[0][0][:BATCH]
    specs = {"fp32": TrainSpec(lr=0.01), "bf16 autocast": TrainSpec(lr=0.01, amp="bf16")}
    runs = {name: block_runner(make_step(copy.deepcopy(trained), (images,), spec, "cpu")) for name, spec in specs.items()}
    for run in runs.values():
        run(3)  # warm-up: allocator, kernels
    samples: dict[str, list[int]] = {name: [] for name in runs}
    ratios: list[float] = []
    names = list(runs)
    for r in range(args.rounds):
        medians = {}
        for name in names[r % 2:] + names[: r % 2]:
            timed = runs[name](args.calls)
            samples[name] += timed
            medians[name] = statistics.median(timed)
        ratios.append(medians["fp32"] / medians["bf16 autocast"])
    figures = {name: latency_metrics(s, BATCH) for name, s in samples.items()}
    speedup = statistics.median(ratios)
    print(f"seed CNN training step, batch {BATCH}, SGD, {args.rounds} rounds x {args.calls} steps, 2 threads\n")
    print("| variant | step p50 ms | step p99 ms | samples/s |")
    print("|---|---|---|---|")
    for name, m in figures.items():
        print(f"| {name} | {m.latency_ms_p50:.2f} | {m.latency_ms_p99:.2f} | {m.throughput_per_s:.0f} |")
    verdict = "accepted" if speedup >= 1 + MIN_SPEEDUP else f"rejected: {speedup:.2f}x, below the required {1 + MIN_SPEEDUP:.2f}x"
    print(f"\nbf16 autocast against fp32: {speedup:.2f}x (median of per-round ratios): {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"speedup": speedup, "verdict": verdict,
                                         "figures": {n: m.to_dict() for n, m in figures.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
