"""The bar for `perfguard optimize`: eager fp32, every perfguard CPU recipe, and ONNX Runtime built by
hand with its own tools, timed interleaved in one process.

    .venv/bin/python bench/handbuilt.py                       # mlp, seed-cnn, encoder
    .venv/bin/python bench/handbuilt.py --models mlp --json /tmp/hb.json

For each model: the eager model, each perfguard recipe built with `monitor.transforms.recipes.build`
(as the worker builds it), and ONNX Runtime fp32, int8 dynamic and int8 static (QDQ, calibrated on the
eval data or the inputs) made by hand with `torch.onnx.export` and `onnxruntime.quantization` at their
defaults. Each variant is called as the worker times it (`served_call`): an ONNX Runtime variant, like
the hand-built sessions, is its session fed ready arrays, as an ONNX Runtime server holds them; one
more row calls perfguard's fp32 ONNX variant through its torch-facing `forward`, the cost of that
interface. Every variant runs on 2 threads; ONNX Runtime's intra-op threads do not spin (beside torch
in one process, spinning pools slow each other's calls several-fold). In each round every variant is
timed for the same number of calls, in a new random order (seeded), and a block counts for the median
of its calls: the first calls after another variant's block are slow (an ONNX Runtime call of the MLP
right after an eager block took 365 us, then 272, then 236; the longer the pause before it, the slower
the first call, so it is a cold start, not torch's threads spinning), and a block's mean would charge
that to whichever variant the order put after another. A variant's speed-up is the median over the
rounds of (eager time / its time) in that round, so a host that drifts during the run moves both.
`bench/optimize.py --handbuilt` runs this first and sets its best hand-built speed-up beside what
`perfguard optimize` kept. Run it alone on the machine: the timings are the point.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from monitor.core.import_paths import resolve  # noqa: E402
from monitor.harness.sampling import block_runner  # noqa: E402
from monitor.harness.worker import served_call  # noqa: E402
from monitor.transforms import recipes  # noqa: E402

THREADS = 2
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"factory": "monitor.examples.models:mlp", "shape": [32, 1024], "calls": 20,
            "recipes": ["dynamic_int8", "static_int8", "bf16", "compile", "torchscript", "onnx_fp32", "onnx_int8_dynamic",
                        "onnx_int8_static"]},
    "seed-cnn": {"factory": "monitor.examples.models:seed_cnn", "shape": [32, 3, 32, 32], "calls": 10,
                 "eval": "monitor.examples.models:seed_cnn_eval",
                 "recipes": ["static_int8", "channels_last", "dynamic_int8", "bf16", "compile", "torchscript", "onnx_fp32",
                             "onnx_int8_dynamic", "onnx_int8_static"]},
    "encoder": {"factory": "monitor.examples.models:encoder", "shape": [8, 128, 768], "calls": 2,
                "recipes": ["dynamic_int8", "bf16", "compile", "torchscript", "onnx_fp32", "onnx_int8_dynamic",
                            "onnx_int8_static"]},
}
HAND_BUILT = ("ort_fp32", "ort_int8_dynamic", "ort_int8_static")
THROUGH_FORWARD = "onnx_fp32_through_forward"  # the torch-facing call's cost, beside the served one
TOLERANCE = 0.05  # perfguard's default relative_error_tolerance: the bar is the best hand-built within it


def inputs(spec: dict[str, Any]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]] | None]:
    """The timed batch and the calibration batches (eval inputs, where the model has them)."""
    if "eval" in spec:
        batches = [(images,) for images, _ in resolve(spec["eval"])()]
        return batches[0][0][: spec["shape"][0]], batches
    return torch.randn(*spec["shape"], generator=torch.Generator().manual_seed(0)), None


def ort_session(onnx: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def hand_built(model: torch.nn.Module, x: torch.Tensor, calibration: list[tuple[torch.Tensor, ...]] | None
               ) -> dict[str, Callable[[], Any]]:
    """ONNX Runtime fp32, int8 dynamic and int8 static, as a user would make them by hand."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    folder = Path(tempfile.mkdtemp(prefix="perfguard-handbuilt-"))
    fp32 = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), fp32, input_names=["x"], output_names=["y"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    quantize_dynamic(fp32, folder / "dynamic.onnx")
    feeds = [{"x": batch[0].numpy()} for batch in (calibration or [(x,)])[:8]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.left, None)

    quantize_static(fp32, folder / "static.onnx", Reader(), quant_format=QuantFormat.QDQ)
    sessions = {name: ort_session((folder / file).read_bytes()) for name, file in
                zip(HAND_BUILT, ("model.onnx", "dynamic.onnx", "static.onnx"), strict=True)}
    feed = {"x": x.numpy()}
    return {name: (lambda s=session: s.run(None, feed)) for name, session in sessions.items()}


def measure(spec: dict[str, Any], rounds: int) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    model = resolve(spec["factory"])().eval()
    x, calibration = inputs(spec)
    calls: dict[str, Callable[[], Any]] = {"eager": lambda: model(x)}
    errors: dict[str, str] = {}
    for name in spec["recipes"]:
        try:
            built, _ = recipes.build(name, model, (x,), {}, calibration, {})
            calls[name] = served_call(built, (x,), {})
            if name == "onnx_fp32":
                calls[THROUGH_FORWARD] = lambda m=built: m(x)
        except Exception as exc:  # noqa: BLE001 - a recipe that cannot build here is reported, not fatal
            errors[name] = f"{type(exc).__name__}: {exc}"[:200]
    calls.update(hand_built(model, x, calibration))
    with torch.inference_mode():
        want = model(x)
        error = {name: output_error(call(), want) for name, call in calls.items()}
    per_round: dict[str, list[float]] = {name: [] for name in calls}
    eager_s: list[float] = []
    names = list(calls)
    runners = {name: block_runner(call) for name, call in calls.items()}
    with torch.inference_mode():
        for call in calls.values():  # warm-up: compile, allocate, pick kernels
            for _ in range(3):
                call()
        order = random.Random(0)
        for _ in range(rounds):
            seconds: dict[str, float] = {}
            for name in order.sample(names, len(names)):
                # A block counts by its median call, as the harness reads one: its first calls start cold.
                seconds[name] = statistics.median(runners[name](spec["calls"])) / 1e9
            eager_s.append(seconds["eager"])
            for name in names:
                per_round[name].append(seconds["eager"] / seconds[name])
    eager_ms = 1000 * statistics.median(eager_s)
    speedups = {name: statistics.median(values) for name, values in per_round.items()}
    faithful = [n for n in HAND_BUILT if error[n] <= TOLERANCE] or list(HAND_BUILT)
    best = max(faithful, key=lambda n: speedups[n])
    fastest = max(HAND_BUILT, key=lambda n: speedups[n])
    return {"speedup": speedups, "output_error": error, "best_hand_built": best,
            "best_hand_built_speedup": speedups[best], "fastest_hand_built": fastest,
            "fastest_hand_built_speedup": speedups[fastest], "errors": errors, "rounds": rounds, "eager_ms": eager_ms}


def output_error(got: Any, want: torch.Tensor) -> float:
    """Relative L2 error of an output against eager fp32's (ONNX Runtime returns a list of arrays)."""
    tensor = torch.as_tensor(got[0] if isinstance(got, list) else got).float()
    return float((tensor - want.float()).norm() / want.float().norm())


def report(name: str, result: dict[str, Any]) -> str:
    rows = [f"### {name}", "", "| variant | speed-up over eager fp32 (median of rounds) | output rel. error |",
            "|---|---|---|"]
    for variant, speedup in sorted(result["speedup"].items(), key=lambda kv: -kv[1]):
        mark = " (hand-built)" if variant in HAND_BUILT else ""
        rows.append(f"| {variant}{mark} | {speedup:.2f}x | {result['output_error'][variant]:.4f} |")
    rows += [f"| {variant} | not built: {error} | |" for variant, error in result["errors"].items()]
    rows.append(f"\neager fp32 {result['eager_ms']:.2f} ms a call; best hand-built within a relative error of "
                f"{TOLERANCE}: {result['best_hand_built']} {result['best_hand_built_speedup']:.2f}x (fastest: "
                f"{result['fastest_hand_built']} {result['fastest_hand_built_speedup']:.2f}x)")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = {}
    for name in args.models:
        results[name] = measure(MODELS[name], args.rounds)
        print(report(name, results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
