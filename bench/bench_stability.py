"""How stable is a reading across fresh processes? CV of p50 over separate `perfguard run` calls.

Runs `perfguard run MODEL --json` `--runs` times (each a fresh worker) for the seed CNN at batch 32
and the MLP at batch 32, with the allocator pinned (the default) and, for comparison, unpinned; and
the same models with torch.utils.benchmark defaults (`Timer(...).adaptive_autorange()`, which uses
one thread unless told otherwise), each in a fresh process too. Prints the coefficient of variation
of the per-process medians. Goals here: <= 3 % on the CNN, <= 1.5 % on the MLP.

A last series times each model in A/B mode beside the other example model, in one worker, and
reports the CV of the ratio of their medians: how much of the spread is host drift that a reference
timed alongside cancels.

    .venv/bin/python bench/bench_stability.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "seed-cnn": ("monitor.examples.models:seed_cnn", [32, 3, 32, 32]),
    "mlp": ("monitor.examples.models:mlp", [32, 1024]),
}

TUB_SCRIPT = """
import json, sys, torch
import torch.utils.benchmark as tb
sys.path.insert(0, {root!r})
from monitor.examples.models import {fn}
model = {fn}().eval()
x = torch.randn({shape})
with torch.inference_mode():
    m = tb.Timer("model(x)", globals={{"model": model, "x": x}}).adaptive_autorange()
print(json.dumps({{"median_ms": m.median * 1000}}))
"""


def write_config(folder: Path, pin: bool, max_time_s: float, threads: int | None) -> Path:
    folder.mkdir()
    thread_line = f"threads = {threads}" if threads else ""
    models = "".join(
        textwrap.dedent(f"""
        [[models]]
        name = "{name}"
        factory = "{factory}"
        inputs = [{{ shape = {shape} }}]
        max_time_s = {max_time_s}
        {thread_line}
        """)
        for name, (factory, shape) in MODELS.items()
    )
    path = folder / "perfguard.toml"
    path.write_text(
        f'[storage]\nurl = "sqlite:///{folder / "bench.db"}"\n'
        f"[harness]\npin_allocator = {'true' if pin else 'false'}\n{models}"
    )
    return path


def perfguard_p50(config: Path, model: str) -> float:
    exe = shutil.which("perfguard", path=os.path.dirname(sys.executable))
    done = subprocess.run([exe, "run", model, "--json", "--config", str(config)], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"perfguard run {model} failed:\n{done.stderr}")
    [run] = json.loads(done.stdout)
    return run["metrics"]["latency_ms_p50"]


def ab_ratio(model: str, reference: str, max_time_s: float, threads: int | None) -> float:
    from monitor.harness.protocol import (
        CompareJob,
        InputTensor,
        SamplingSettings,
        Subject,
    )
    from monitor.harness.runner import run_worker

    subjects = [
        Subject(label=name, factory=MODELS[name][0], inputs=[InputTensor(MODELS[name][1])])
        for name in (reference, model)
    ]
    job = CompareJob(model=model, subjects=subjects, batch_size=32, threads=threads,
                     sampling=SamplingSettings(max_time_s=max_time_s), sys_path=[str(ROOT)])
    outcome = run_worker(job, timeout_s=300)
    if outcome.result is None:
        raise SystemExit(f"A/B run of {model} failed:\n{outcome.error}")
    return outcome.result.comparison[model]["ratio_p50"]


def tub_median(model: str) -> float:
    factory, shape = MODELS[model]
    script = TUB_SCRIPT.format(root=str(ROOT), fn=factory.split(":")[1], shape=shape)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["median_ms"]


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--max-time-s", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="perfguard threads (default: torch's)")
    args = parser.parse_args()
    print(f"runs={args.runs} max_time_s={args.max_time_s} threads={args.threads or 'torch default'}")
    with tempfile.TemporaryDirectory() as tmp:
        pinned = write_config(Path(tmp) / "pinned", True, args.max_time_s, args.threads)
        unpinned = write_config(Path(tmp) / "unpinned", False, args.max_time_s, args.threads)
        print(f"{'model':<9} {'method':<34} {'median of p50 ms':>17} {'CV %':>6}   per-process medians")
        for model in MODELS:
            reference = next(name for name in MODELS if name != model)
            ab_label = f"A/B ratio to {reference} (one worker)"
            series = {"perfguard (allocator pinned)": [], "perfguard (allocator not pinned)": [],
                      "torch.utils.benchmark defaults": [], ab_label: []}
            for _ in range(args.runs):  # interleaved so host drift hits each method alike
                series["perfguard (allocator pinned)"].append(perfguard_p50(pinned, model))
                series["perfguard (allocator not pinned)"].append(perfguard_p50(unpinned, model))
                series["torch.utils.benchmark defaults"].append(tub_median(model))
                series[ab_label].append(ab_ratio(model, reference, args.max_time_s, args.threads))
            for method, values in series.items():
                print(f"{model:<9} {method:<34} {statistics.median(values):17.3f} {cv(values):6.2f}   "
                      + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()
