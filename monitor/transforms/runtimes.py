"""Candidates that another runtime runs: TorchScript and ONNX Runtime, inside the worker.

A runtime candidate is a module callable like the model (same positional tensors, outputs as torch
tensors of the model's device), so the harness compares and judges it as it does an eager one; it is
timed as its runtime serves it (`served_call`), not through that torch-facing call.
What it saves is the whole model in its runtime's format (a TorchScript archive, an ONNX file), read
back by `load` after the variant's sha256 check: a state dict cannot rebuild it. Each holds that
artifact (`artifact`, bytes: its size is the candidate's size) and the parameter count of the model
it came from (`param_count`: a frozen or exported model keeps its weights as constants).

Why these settings: ONNX Runtime gets as many intra-op threads as torch has (the worker's `threads`)
and does not spin them. Timed beside torch in one process, spinning pools of both runtimes slowed an
MLP call from ~3 ms to 17-38 ms (the A/B then measured their fight, not the models).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from monitor.core.catalog import device_kind, recipe

Kernels = list[tuple[str, list[list[int]], float]]  # a runtime profiler's: (operator, input shapes, µs) each


class ConversionError(ValueError):
    """The model cannot run on this runtime; the message says why (recipes.RecipeError adds the
    recipe's name)."""


def unavailable(name: str, device: str) -> str | None:
    """Why the runtime recipe cannot run on `device` here, beyond what the catalog says, else None."""
    if recipe(name).runtime == "onnxruntime" and device_kind(device) == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return f"{name} on {device} needs onnxruntime's CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def build(
    name: str, model: nn.Module, args: tuple, kwargs: dict, calibration: Iterable[tuple] | None,
    params: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    """The candidate of runtime recipe `name` from `model` (a private copy, in eval mode), and what it
    resolved. Every failure to convert is a ConversionError that says why."""
    built, resolved = _build(name, model, args, kwargs, calibration, params)
    resolved["params"] = built.param_count = sum(p.numel() for p in model.parameters())
    return built, resolved


def _build(
    name: str, model: nn.Module, args: tuple, kwargs: dict, calibration: Iterable[tuple] | None,
    params: dict[str, Any],
) -> tuple[OnnxModule | ScriptedModule, dict[str, Any]]:
    if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
        raise ConversionError(f"runs models called with positional tensors only; this one takes "
                              f"{', '.join(sorted(kwargs)) or 'non-tensor arguments'}")
    if name == "torchscript":
        return _torchscript(model, args), {}
    onnx = _export(model, args)
    if name == "onnx_int8_dynamic":
        onnx = _quantize_dynamic(onnx, reduce := _reduce_range())
        return OnnxModule(onnx, _device_of(args)), {"reduce_range": reduce}
    if name == "onnx_int8_static":
        batches = [args] if calibration is None else list(itertools.islice(calibration, params["calibration_batches"]))
        onnx, used = _quantize_static(onnx, [tuple(b) for b in batches], reduce := _reduce_range())
        return OnnxModule(onnx, _device_of(args)), {"calibration_batches": used, "reduce_range": reduce}
    return OnnxModule(onnx, _device_of(args)), {}


def save(module: nn.Module, handle: IO[bytes]) -> None:
    """Write the runtime candidate's artifact to `handle`."""
    if not isinstance(module, (OnnxModule, ScriptedModule)):
        raise TypeError(f"{type(module).__name__} is not a runtime candidate")
    handle.write(module.artifact)


def load(name: str, handle: IO[bytes], device: str, params: dict[str, Any]) -> nn.Module:
    """The runtime candidate saved by `save`, from its verified artifact and the params `build`
    resolved."""
    module: OnnxModule | ScriptedModule
    if recipe(name).runtime == "onnxruntime":
        module = OnnxModule(handle.read(), torch.device(device))
    else:
        module = ScriptedModule(handle.read(), device)
    module.param_count = int(params.get("params", 0))
    return module


class ScriptedModule(nn.Module):
    """A frozen TorchScript module, optimised for inference once loaded.

    The archive saved is the frozen module: optimize_for_inference prepacks convolution weights into
    operators that TorchScript cannot read back, so that step is redone after each load.
    """

    def __init__(self, archive: bytes, device: str | torch.device):
        super().__init__()
        self.artifact = archive
        self.param_count = 0
        with _jit_warnings():
            frozen = torch.jit.load(io.BytesIO(archive), map_location=device)
            self.scripted = torch.jit.optimize_for_inference(frozen)

    def forward(self, *args: torch.Tensor) -> Any:
        return self.scripted(*args)

    def served_call(self, args: tuple, kwargs: dict) -> Callable[[], Any]:
        """The call a timing makes: the scripted module itself, as a TorchScript server calls it."""
        scripted = self.scripted
        return lambda: scripted(*args, **kwargs)


class OnnxModule(nn.Module):
    """An ONNX model in an ONNX Runtime session, called like the torch model it was exported from."""

    def __init__(self, onnx: bytes, device: torch.device, cpu_arena: bool = True, profile_prefix: str | None = None):
        super().__init__()
        import onnxruntime

        self.artifact = onnx
        self.param_count = 0
        self.device = device
        options = onnxruntime.SessionOptions()
        options.enable_cpu_mem_arena = cpu_arena
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else [
            "CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(onnx, options, providers=providers)
        self.names = [i.name for i in self.session.get_inputs()]

    def served_call(self, args: tuple, kwargs: dict) -> Callable[[], Any]:
        """The call a timing makes: on a CPU, the session fed arrays made once from `args`, as an ONNX
        Runtime server holds its requests. Through `forward` each call would also pay for the tensors'
        conversion, about 8 % of a 0.2 ms MLP call (RESULTS §18), which serving ONNX Runtime does not.
        On CUDA it goes through `forward` (a copy through host memory each way)."""
        if self.device.type != "cpu" or kwargs:
            return lambda: self(*args, **kwargs)
        feed, run = self._feed(args), self.session.run
        return lambda: run(None, feed)

    def cold_call(self, args: tuple, kwargs: dict) -> Callable[[], Any] | None:
        """The served call on a session of its own without ONNX Runtime's CPU arena, called once
        already, for measuring what one call takes at its peak. The timed session keeps a call's
        workspace in its arena from its first call on, so its later calls show none (0 MiB, against
        about 3 MiB for the seed CNN at batch 32), and a session's first call also pays one-time
        costs (3.0 to 4.0 MiB from one session to the next). Without the arena a later call allocates
        its own, as torch's do (2.4-2.5 MiB over four sessions; eager torch: 8.8). None on CUDA, where
        the memory is ONNX Runtime's own, which torch's allocator does not see."""
        if self.device.type != "cpu":
            return None
        return self._fresh(args, kwargs, cpu_arena=False)[1]

    def op_profiler(self, args: tuple, kwargs: dict) -> Callable[[int], Kernels] | None:
        """A profiler of `calls` served calls from ONNX Runtime's own profiler (torch's sees nothing
        inside a session): the kernels they ran, (`onnxruntime::<op type>`, input shapes, µs) each,
        which harness/profiling.py turns into rows. Each use profiles a fresh session with as many
        threads as torch has then, after a warm-up call. None on CUDA (its nodes' times are launches)."""
        if self.device.type != "cpu" or kwargs:
            return None

        def profile(calls: int) -> Kernels:
            with tempfile.TemporaryDirectory(prefix="perfguard-ort-profile-") as folder:
                module, call = self._fresh(args, kwargs, profile_prefix=str(Path(folder) / "ort"))
                for _ in range(calls):
                    call()
                with open(module.session.end_profiling(), encoding="utf-8") as handle:
                    return _kernels(json.load(handle), calls)

        return profile

    def _fresh(self, args: tuple, kwargs: dict, **options: Any) -> tuple[OnnxModule, Callable[[], Any]]:
        """A session of its own with `options` (OnnxModule's), and its served call, called once."""
        module = OnnxModule(self.artifact, self.device, **options)
        call = module.served_call(args, kwargs)
        call()
        return module, call

    def _feed(self, args: tuple) -> dict[str, Any]:
        """The session's inputs: each positional tensor by its input's name, as a host array."""
        return {name: _host_array(a) for name, a in zip(self.names, args, strict=True)}

    def forward(self, *args: torch.Tensor) -> Any:
        # Lean on purpose: on a 0.2 ms call each spare tensor op is a measurable share (RESULTS §18).
        outputs = [torch.from_numpy(o) for o in self.session.run(None, self._feed(args))]
        if self.device.type != "cpu":
            outputs = [o.to(self.device) for o in outputs]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _kernels(events: list[dict[str, Any]], calls: int) -> Kernels:
    """The kernels of ONNX Runtime's trace over its last `calls` runs (the first run, a warm-up, is
    left out): (operator, input shapes, µs) each."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    since = runs[-calls] if len(runs) >= calls else 0
    kernels = []
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < since:
            continue
        args = event.get("args", {})
        shapes = [shape for typed in args.get("input_type_shape", []) for shape in typed.values()]
        kernels.append((f"onnxruntime::{args.get('op_name', '?')}", shapes, float(event["dur"])))
    return kernels


def _host_array(tensor: torch.Tensor) -> Any:
    """The tensor as a numpy array sharing its memory where it can (a CPU tensor outside autograd)."""
    if tensor.device.type == "cpu" and not tensor.requires_grad:
        return tensor.numpy()
    return tensor.detach().cpu().numpy()


def _torchscript(model: nn.Module, args: tuple) -> ScriptedModule:
    buffer = io.BytesIO()
    try:
        with _jit_warnings(), torch.no_grad():
            traced = torch.jit.trace(model, args)
            torch.jit.save(torch.jit.freeze(traced), buffer)
        return ScriptedModule(buffer.getvalue(), _device_of(args))
    except Exception as exc:
        raise ConversionError(f"torch.jit cannot trace {type(model).__name__} "
                              f"({type(exc).__name__}: {_first_line(exc)})") from exc


def _export(model: nn.Module, args: tuple) -> bytes:
    """The model as ONNX, with the batch dimension of every input and output left free (a variant
    serves every batch size of its series)."""
    inputs = [f"input_{i}" for i in range(len(args))]
    try:
        # Not under no_grad: there a transformer layer takes its fused fast path, an operator
        # (aten::_transformer_encoder_layer_fwd) that ONNX has no counterpart for.
        with _jit_warnings(), tempfile.TemporaryDirectory(prefix="perfguard-onnx-") as folder:
            with torch.no_grad():
                probe = model(*args)
            count = len(probe) if isinstance(probe, (tuple, list)) else 1
            outputs = [f"output_{i}" for i in range(count)]
            path = Path(folder) / "model.onnx"
            torch.onnx.export(model, args, path, input_names=inputs, output_names=outputs, dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in inputs + outputs})
            return path.read_bytes()
    except Exception as exc:
        raise ConversionError(f"torch.onnx cannot export {type(model).__name__} "
                              f"({type(exc).__name__}: {_first_line(exc)})") from exc


def _reduce_range() -> bool:
    """Whether int8 weights keep to 7 bits: ONNX Runtime's advice for x86 CPUs without VNNI, whose
    u8 x s8 instructions saturate otherwise (measured on an AVX2-only EPYC: an MLP's output off by 11 %
    with 8 bits, against 1-2 % with 7). torch reports AVX512 or better for CPUs that have VNNI."""
    return torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2", "NO AVX")


def _quantize_dynamic(onnx: bytes, reduce_range: bool) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _files(onnx) as (source, target):
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        return target.read_bytes()


def _quantize_static(onnx: bytes, batches: list[tuple], reduce_range: bool) -> tuple[bytes, int]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = [{f"input_{i}": a.detach().cpu().numpy() for i, a in enumerate(batch)} for batch in batches]
    if not feeds:
        raise ConversionError("the calibration data yielded no batch")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.left, None)

    with _files(onnx) as (source, target):
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range)
        return target.read_bytes(), len(feeds)


@contextlib.contextmanager
def _files(onnx: bytes) -> Iterator[tuple[Path, Path]]:
    """The model written to a temporary file, and a path beside it for the quantized one (ONNX
    Runtime's quantization tools read and write files)."""
    with tempfile.TemporaryDirectory(prefix="perfguard-onnx-") as folder:
        source = Path(folder) / "model.onnx"
        source.write_bytes(onnx)
        yield source, Path(folder) / "quantized.onnx"


def _device_of(args: tuple) -> torch.device:
    return args[0].device if args else torch.device("cpu")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


@contextlib.contextmanager
def _jit_warnings() -> Iterator[None]:
    """torch.jit and the TorchScript-based ONNX exporter warn as deprecated in torch 2.13 but work;
    their notices are silenced here only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
