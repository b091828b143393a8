"""Concurrent load on the MLP: throughput and latency at 1, 2 and 4 callers, and where 2 cores saturate.

    .venv/bin/python bench/load.py                  # MLP at batch 32, 1/2/4 callers, torch on 1 and 2 threads
    .venv/bin/python bench/load.py --duration 5 --json /tmp/load.json
    .venv/bin/python bench/load.py --gil            # a Python-bound model: caller threads against processes

Each level runs `monitor.harness.load.drive` (N caller threads, one loaded model, each call timed, a
warm-up not counted) on the model in this process, under `torch.inference_mode`. Torch's intra-op pool
is per calling thread, so N callers on T threads each ask for N x T cores: the table shows what that
costs on a 2-core host. Levels run in turn, each repeated `--repeats` times in a rotating order, and
the median of each level's figures is kept. Run it alone on the machine: the timings are the point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from monitor.examples import models  # noqa: E402
from monitor.harness.load import drive, drive_processes  # noqa: E402

BATCH = 32
LEVELS = (1, 2, 4)
GIL_BATCH = 1


class ManySmallLayers(torch.nn.Module):
    """64 Linear(8, 8) layers called one by one on one row: the time goes to Python and torch's
    dispatch, under the GIL, not to kernels (as in many small serving models)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def gil_bound_setup() -> tuple:
    """A caller process's own model (drive_processes): one thread, like the caller threads."""
    torch.set_num_threads(1)
    model, x = ManySmallLayers().eval(), torch.randn(GIL_BATCH, 8)
    return (lambda: model(x)), torch.inference_mode


def gil(duration: float, repeats: int) -> int:
    """Threads against processes on a model whose time is Python's: at 1 and 2 callers."""
    call, _ = gil_bound_setup()
    plan = [(kind, n) for kind in ("threads", "processes") for n in (1, 2)]
    seen: dict[tuple[str, int], list[float]] = {key: [] for key in plan}
    for r in range(repeats):
        for kind, n in plan[r % len(plan):] + plan[: r % len(plan)]:
            level = (drive(call, n, GIL_BATCH, duration, warmup_s=0.5, context=torch.inference_mode)
                     if kind == "threads" else drive_processes(gil_bound_setup, n, GIL_BATCH, duration, warmup_s=0.5))
            seen[kind, n].append(level.metrics.throughput_per_s or 0.0)
    base = statistics.median(seen["threads", 1])
    print(f"64 x Linear(8, 8) on one row, 1 torch thread a caller, {duration:g} s a level, median of {repeats}\n")
    print("| callers as | callers | calls/s | vs 1 caller thread |")
    print("|---|---|---|---|")
    for kind, n in plan:
        rate = statistics.median(seen[kind, n])
        print(f"| {kind} | {n} | {rate:.0f} | {rate / base:.2f}x |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per level (default 3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--gil", action="store_true", help="threads against processes on a Python-bound model")
    args = parser.parse_args(argv)
    if args.gil:
        return gil(args.duration, args.repeats)
    model = models.mlp().eval()
    x = torch.randn(BATCH, 1024, generator=torch.Generator().manual_seed(0))
    plan = [(threads, n) for threads in (1, 2) for n in LEVELS]
    seen: dict[tuple[int, int], list[dict[str, float]]] = {key: [] for key in plan}
    for r in range(args.repeats):
        for threads, n in plan[r % len(plan):] + plan[: r % len(plan)]:
            torch.set_num_threads(threads)
            level = drive(lambda: model(x), n, BATCH, args.duration, warmup_s=0.5, context=torch.inference_mode)
            m = level.metrics
            seen[threads, n].append({"samples_per_s": m.throughput_per_s or 0.0, "p50_ms": m.latency_ms_p50 or 0.0,
                                     "p99_ms": m.latency_ms_p99 or 0.0})
    rows = {f"threads={t} callers={n}": {k: statistics.median(v[k] for v in seen[t, n]) for k in seen[t, n][0]}
            for t, n in plan}
    base = rows["threads=1 callers=1"]["samples_per_s"]
    print(f"MLP 1024-1024-1024-10, batch {BATCH}, {args.duration:g} s a level, median of {args.repeats}\n")
    print("| torch threads a caller | callers | samples/s | vs 1 caller on 1 thread | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for (t, n), (name, row) in zip(plan, rows.items(), strict=True):
        print(f"| {t} | {n} | {row['samples_per_s']:.0f} | {row['samples_per_s'] / base:.2f}x | "
              f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
