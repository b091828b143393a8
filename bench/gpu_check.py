"""The GPU paths end to end, through the command line, on one CUDA device: what a team should run once
on a new GPU host before trusting perfguard's numbers there.

    python bench/gpu_check.py --out /tmp/gpu               # on a host with a CUDA device
    .venv/bin/python bench/gpu_check.py --device cpu       # the same script on the CPU, to check it runs

In a new folder it writes a config of two models on the device and runs, with `perfguard` as a user
would (`python -m monitor.cli`, so an installed console script is not needed):
1. `perfguard run --json`: the MLP (batch 1 and 32, one training-step series, load at 1 and 4
   callers) and the seed CNN (batch 32, accuracy on its digits): CUDA-synchronised latency, CUDA peak
   memory, GPU utilisation, power and energy a call (NVML), per series;
2. `perfguard optimize mlp --dry-run --json` with the recipes a GPU suits (fp16, bf16_autocast,
   half, compile, torchscript, and onnx_fp32, which takes ONNX Runtime's CUDA provider where
   onnxruntime-gpu is installed);
3. `perfguard optimize mlp --train --json`: the training step against fp16 and bf16 autocast.
It prints one table per step and a list of what the GPU paths gave (a figure missing on a CUDA device
is named as missing, and the exit status is 1), and writes every JSON answer to --out. perfguard's
dependencies must be importable (`pip install -e .`, or, on a host without a network, their wheels
on PYTHONPATH). Budget: about 3 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GPU_FIGURES = ("cuda_peak_mem_mb", "gpu_util_pct", "gpu_power_w", "energy_j_per_inference")
GPU_RECIPES = ["fp16", "bf16_autocast", "half", "compile", "torchscript", "onnx_fp32"]
CPU_RECIPES = ["bf16", "dynamic_int8", "torchscript", "onnx_fp32"]


def config_text(device: str, max_time_s: float) -> str:
    return f"""[storage]
url = "sqlite:///perfguard.db"

[harness]
min_samples = 50

[optimize]
dry_run = true
max_candidates = 8

[[models]]
name = "mlp"
factory = "monitor.examples.models:mlp"
inputs = [{{ shape = [32, 1024] }}]
device = "{device}"
batch_sizes = [1, 32]
max_time_s = {max_time_s}
timeout_s = 600
optimize = {{ fidelity = "relative_error" }}
train = {{ loss = "cross_entropy", optimizer = "sgd", lr = 0.01 }}
load = {{ concurrency = [1, 4], duration_s = 2.0, warmup_s = 0.5 }}

[[models]]
name = "seed-cnn"
factory = "monitor.examples.models:seed_cnn"
inputs = [{{ shape = [32, 3, 32, 32] }}]
device = "{device}"
eval = "monitor.examples.models:seed_cnn_eval"
prepare = "monitor.examples.models:seed_cnn_prepare"
max_time_s = {max_time_s}
timeout_s = 600
"""


def perfguard(folder: Path, *args: str) -> Any:
    """One command, its JSON answer; a failure stops the check with the command's own words."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "monitor.cli", *args, "--config", str(folder / "perfguard.toml"), "--json"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    print(f"$ perfguard {' '.join(args)}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    if done.returncode not in (0, 1) or not done.stdout.strip():  # 1: a benchmark failed, JSON still printed
        sys.exit(f"perfguard {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runs_table(runs: list[dict[str, Any]]) -> str:
    columns = ("latency_ms_p50", "latency_ms_p99", "throughput_per_s", "peak_rss_mb", *GPU_FIGURES, "accuracy")
    rows = ["| model | series | status | " + " | ".join(columns) + " |", "|---" * (len(columns) + 3) + "|"]
    for run in runs:
        metrics = run.get("metrics") or {}
        series = f"{run.get('mode', 'infer')} b{run.get('batch_size')}" + (
            f" x{run['concurrency']}" if run.get("concurrency", 1) != 1 else "")
        rows.append(f"| {run['model']} | {series} | {run['status']} | "
                    + " | ".join(fmt(metrics.get(c)) for c in columns) + " |")
    return "\n".join(rows)


def candidates_table(action: dict[str, Any]) -> str:
    rows = ["| candidate | p50 ms | speed-up | decision |", "|---|---|---|---|"]
    for c in action.get("candidates", []):
        label = c.get("recipe") or c.get("label")
        speed = c.get("speedup") or (1 / c["ratio_p50"] if c.get("ratio_p50") else None)
        decision = "accepted" if c.get("accepted") else "rejected: " + "; ".join(c.get("reasons", []))
        rows.append(f"| {label} | {fmt(c.get('p50_ms'))} | {fmt(speed)} | {decision} |")
    return "\n".join(rows) + f"\n\nstatus: {action.get('status')}; {action.get('reason') or ''}"


def gpu_paths(runs: list[dict[str, Any]], device: str) -> list[str]:
    """What each GPU path gave, series by series; on a CUDA device a missing figure is a finding."""
    lines = []
    for run in runs:
        metrics = run.get("metrics") or {}
        missing = [f for f in GPU_FIGURES if metrics.get(f) is None]
        where = f"{run['model']} {run.get('mode', 'infer')} b{run.get('batch_size')} x{run.get('concurrency', 1)}"
        if run["status"] != "ok":
            first = (run.get("error") or "").strip().splitlines()[:1]
            lines.append(f"{where}: {run['status']}: {first[0] if first else 'no error recorded'}")
        elif device.startswith("cuda") and missing:
            lines.append(f"{where}: MISSING {', '.join(missing)}")
        else:
            lines.append(f"{where}: " + ", ".join(f"{f} {fmt(metrics.get(f))}" for f in GPU_FIGURES))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the script")
    parser.add_argument("--out", type=Path, help="a folder for every JSON answer (default: a new one)")
    parser.add_argument("--max-time", type=float, default=2.0, help="sampling budget a series, seconds")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="perfguard-gpu-"))
    out = args.out or folder
    out.mkdir(parents=True, exist_ok=True)
    (folder / "perfguard.toml").write_text(config_text(args.device, args.max_time))
    gpu = args.device.startswith("cuda")
    runs = perfguard(folder, "run")
    (out / "runs.json").write_text(json.dumps(runs, indent=1))
    print("\n" + runs_table(runs) + "\n", flush=True)
    recipes = [arg for r in (GPU_RECIPES if gpu else CPU_RECIPES) for arg in ("--recipe", r)]
    action = perfguard(folder, "optimize", "mlp", "--dry-run", *recipes)
    (out / "optimize.json").write_text(json.dumps(action, indent=1))
    print("\n" + candidates_table(action) + "\n", flush=True)
    amps = ["--amp", "fp16", "--amp", "bf16"] if gpu else ["--amp", "bf16"]
    advice = perfguard(folder, "optimize", "mlp", "--train", *amps)
    (out / "train.json").write_text(json.dumps(advice, indent=1))
    print("\n" + candidates_table(advice) + "\n", flush=True)
    env = next((r["env"] for r in runs if r.get("env")), {})
    paths = [f"device {args.device}: {env.get('gpu') or 'no GPU'}, driver {env.get('gpu_driver')}, "
             f"CUDA {env.get('cuda')}, torch {env.get('torch')}", *gpu_paths(runs, args.device)]
    print("GPU paths, series by series:\n" + "\n".join(paths), flush=True)
    (out / "summary.txt").write_text("\n".join(paths) + "\n")
    return 1 if any("MISSING" in line or ": failed: " in line for line in paths) else 0


if __name__ == "__main__":
    sys.exit(main())
