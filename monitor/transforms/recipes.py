"""Builds the candidates named in the recipe catalog from a model, inside the worker (imports torch).

Every candidate is a new module, callable exactly like the model it came from (same args and kwargs,
same device, outputs of the model's dtype): recipes that change dtype or memory layout wrap the
model to convert inputs on the way in and outputs on the way out. `build` makes the candidate
(calibrating or pruning as the recipe needs) and returns the resolved params; `structure` rebuilds
the same module shapes from a fresh model and those params, so that a saved candidate state dict
can be loaded back with `weights_only=True` (no pickled code).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import itertools
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.utils._pytree import tree_map

from monitor.core.catalog import device_kind, recipe
from monitor.transforms import distill, prune, runtimes

# User params each recipe takes, with their defaults; a recipe not listed takes none.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "static_int8": {"calibration_batches": 8},
    "onnx_int8_static": {"calibration_batches": 8},
    "prune_structured": {"amount": 0.3},
    "prune_l1_unstructured": {"amount": 0.5},
    # from the model's `distill` table (config.ModelConfig.distill_params, same defaults); `eval` is the
    # model's eval, set when the student trains on it less its `holdout` share (no `data`)
    "distill": {"student": None, "data": None, "holdout": 0.25, "eval": None, "temperature": 2.0, "weight": 0.5,
                "epochs": 3, "max_time_s": 60.0, "lr": 0.001},
}
STATIC_INT8_BACKEND = "x86"
C_COMPILERS = ("c++", "g++", "clang++")

# (private copy of the model, args, kwargs, params) -> the candidate's structure
StructureFn = Callable[[nn.Module, tuple, dict, dict[str, Any]], nn.Module]
# (private copy, args, kwargs, calibration, params) -> the candidate, and what it resolved
DataBuildFn = Callable[
    [nn.Module, tuple, dict, Iterable[tuple] | None, dict[str, Any]], tuple[nn.Module, dict[str, Any]]
]


class RecipeError(ValueError):
    """The recipe does not apply to this model or to these params; the message says why."""


def unavailable(name: str, device: str, cpu_flags: Sequence[str]) -> str | None:
    """Why the recipe cannot run here (device, missing CPU flag, package not importable), else None."""
    spec = recipe(name)
    kind = device_kind(device)
    if kind not in spec.devices:
        return f"{name} runs on {' or '.join(spec.devices)} only, not on {device}"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"{name} needs CUDA, which this torch ({torch.__version__}) cannot use here"
    if kind == "cpu" and spec.cpu_flags and not set(spec.cpu_flags) & set(cpu_flags):
        return f"{name} needs a CPU with one of the flags {', '.join(spec.cpu_flags)}; this one has none"
    if name == "static_int8" and STATIC_INT8_BACKEND not in torch.backends.quantized.supported_engines:
        return f"{name} needs torch's {STATIC_INT8_BACKEND} quantized engine, which this torch lacks"
    if spec.compiles and kind == "cpu" and not any(shutil.which(c) for c in C_COMPILERS):
        return f"{name} uses torch.compile, which needs a C++ compiler on CPU; none was found"
    if spec.needs is not None:
        try:
            importlib.import_module(spec.needs)
        except ModuleNotFoundError:
            return f"{spec.needs} is not installed"
        except Exception as exc:  # noqa: BLE001 - a package broken against this torch is just as unusable
            return f"{spec.needs} does not import: {type(exc).__name__}: {exc}"
    return runtimes.unavailable(name, device) if spec.runtime else None


def build(
    name: str,
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    calibration: Iterable[tuple] | None,
    params: dict[str, Any],
    progress: distill.Progress | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A new candidate module built from `model` (which must be left untouched: deepcopy first),
    callable exactly like `model` with the same (args, kwargs), on the same device, with outputs of
    the same dtype as the model's (wrap to cast inputs/outputs where the recipe changes dtype or
    layout). Returns the module and the resolved params: everything `structure` needs to rebuild the
    same module shape later (e.g. kept widths of a pruned layer, the quantization backend).

    `calibration`: positional-argument tuples to calibrate static quantization on (the inputs of
    eval batches, say); None calibrates on (args, kwargs). Compiling recipes are called once on
    (args, kwargs) under `torch.inference_mode`, as the worker times them, so that the slow first
    call (`compile_s` in the resolved params) is paid here rather than in the measurement. `progress`
    hears from recipes that train (distill), per epoch.
    """
    spec = recipe(name)
    resolved = _resolve(name, params)
    try:
        if name == "distill":  # the teacher itself, not a copy to change: only its outputs are read
            candidate, found = distill.build(model, args, kwargs, resolved, progress)
            resolved.update(found)
        elif spec.runtime:
            candidate, found = runtimes.build(name, _private_copy(model), args, kwargs, calibration, resolved)
            resolved.update(found)
        elif name in _DATA_BUILDS:
            candidate, found = _DATA_BUILDS[name](_private_copy(model), args, kwargs, calibration, resolved)
            resolved.update(found)
        else:
            candidate = _STRUCTURES[name](_private_copy(model), args, kwargs, resolved)
    except (prune.PruneError, runtimes.ConversionError, distill.DistillError) as exc:
        raise RecipeError(f"{name}: {exc}") from exc
    if spec.compiles:
        started = time.perf_counter()
        with torch.inference_mode():
            candidate(*args, **kwargs)
        resolved["compile_s"] = round(time.perf_counter() - started, 2)
    return candidate, resolved


def structure(name: str, model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    """The candidate's module structure rebuilt from a fresh base `model` and the resolved params,
    without calibration or fine-tuning: `structure(...).load_state_dict(torch.load(f, weights_only=True))`
    of a saved `candidate.state_dict()` must reproduce the candidate's outputs exactly. A runtime
    recipe has no structure: its saved artifact is the whole model (runtimes.load)."""
    if recipe(name).runtime:
        raise RecipeError(f"{name} runs on {recipe(name).runtime}: it is loaded from its saved artifact, "
                          "not rebuilt from a structure")
    try:
        # A student is another model altogether: the teacher gives it nothing but its device, no copy.
        return _STRUCTURES[name](model if name == "distill" else _private_copy(model), args, kwargs, params)
    except (prune.PruneError, distill.DistillError) as exc:
        raise RecipeError(f"{name}: {exc}") from exc


# --- wrappers: the candidate as callers see it -------------------------------------------------


class CastFloats(nn.Module):
    """Runs `model` in `compute_dtype`: floating inputs are cast to it, floating outputs back."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype, output_dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        self.output_dtype = output_dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _cast_floats((args, kwargs), self.compute_dtype)
        return _cast_floats(self.model(*args, **kwargs), self.output_dtype)


class Autocast(nn.Module):
    """Runs `model` under autocast to `dtype`; floating outputs come back as `output_dtype`."""

    def __init__(self, model: nn.Module, device_type: str, dtype: torch.dtype, output_dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.dtype = dtype
        self.output_dtype = output_dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.model(*args, **kwargs)
        return _cast_floats(out, self.output_dtype)


class ChannelsLast(nn.Module):
    """Runs `model` (already converted) on its 4-D floating inputs converted to channels_last."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = tree_map(_to_channels_last, (args, kwargs))
        return self.model(*args, **kwargs)


class Holder(nn.Module):
    """Calls `model` unchanged; holds it as a child so that module swaps can replace it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class WithoutMhaFastpath(nn.Module):
    """Runs `model` with the MultiheadAttention fast path off, during its own forward only.

    The fast path reads Linear weights directly and breaks on dynamically quantized ones. The switch
    is process-global and the worker times the original model in the same process, so it is turned
    off around this call and restored after (two C calls: well under a microsecond).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.model(*args, **kwargs)
        finally:
            torch.backends.mha.set_fastpath_enabled(before)


# --- recipes -----------------------------------------------------------------------------------


def _dynamic_int8(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    # Linear only: a dynamically quantized LSTM keeps its weights as TorchScript objects in the state
    # dict, which torch.load(weights_only=True) refuses, so such a candidate could never be loaded back.
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise RecipeError(f"dynamic_int8: {type(model).__name__} has no Linear layer to quantize")
    if isinstance(model, nn.Linear):
        model = Holder(model)  # quantize_dynamic swaps children only, never the module it is given
    with _quantization_warnings():
        quantized: nn.Module = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    if any(isinstance(m, nn.MultiheadAttention) for m in quantized.modules()):
        return WithoutMhaFastpath(quantized)
    return quantized


def _static_int8(
    model: nn.Module, args: tuple, kwargs: dict, calibration: Iterable[tuple] | None, params: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    batches = params["calibration_batches"]
    prepared = _prepare_fx(model, args, STATIC_INT8_BACKEND)
    device = _device_of(model)
    # Identical batches move neither min/max nor histogram observers: the example inputs once suffice.
    calls = [(args, kwargs)] if calibration is None else ((batch, {}) for batch in calibration)
    used = 0
    with torch.no_grad(), _quantization_warnings():
        for batch_args, batch_kwargs in itertools.islice(calls, batches):
            prepared(*(_to(a, device) for a in batch_args), **batch_kwargs)
            used += 1
    if not used:
        raise RecipeError("static_int8: the calibration data yielded no batch")
    return _convert_fx(prepared), {"backend": STATIC_INT8_BACKEND, "calibration_batches": used}


def _static_int8_structure(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return _convert_fx(_prepare_fx(model, args, params.get("backend", STATIC_INT8_BACKEND)))


def _prepare_fx(model: nn.Module, args: tuple, backend: str) -> torch.fx.GraphModule:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    try:
        with _quantization_warnings():
            return prepare_fx(model.eval(), get_default_qconfig_mapping(backend), example_inputs=tuple(args))
    except Exception as exc:
        raise RecipeError(
            f"static_int8: torch.fx cannot trace {type(model).__name__} for graph-mode quantization "
            f"({type(exc).__name__}: {exc}); try dynamic_int8, which needs no trace"
        ) from exc


def _convert_fx(prepared: torch.fx.GraphModule) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with _quantization_warnings():
        return convert_fx(prepared)


def _bf16(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    # Weights cast once beat CPU autocast, which re-casts them on every call (batch 32, 2 threads, AMX,
    # against fp32): MLP 1.5-1.8x vs 0.9-1.0x, seed CNN 0.87-0.92x vs 0.85-0.89x (both lose there).
    output_dtype = _float_dtype(model)  # before the cast: Module.to converts in place
    return CastFloats(model.to(torch.bfloat16), torch.bfloat16, output_dtype)


def _channels_last(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    # Module.to takes memory_format; torch's own stub does not say so.
    return ChannelsLast(model.to(memory_format=torch.channels_last))  # type: ignore[call-overload]


def _compile(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return cast(nn.Module, torch.compile(model))  # an OptimizedModule, typed as any callable


def _torchao_int8(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    # A saved state dict loads back into a model quantized the same way (torchao's documented round
    # trip); take the state dict outside inference_mode, where torchao tensors refuse it.
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        config = Int8DynamicActivationInt8WeightConfig()
    except ImportError:  # torchao before 0.10 named its configs as functions
        from torchao.quantization import int8_dynamic_activation_int8_weight

        config = int8_dynamic_activation_int8_weight()
    quantize_(model, config)
    return model


def _torchao_int8_compile(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    # Eager, torchao int8 is slower than fp32; compiled it is the fastest CPU Linear recipe measured.
    return cast(nn.Module, torch.compile(_torchao_int8(model, args, kwargs, params)))


def _fp16(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return Autocast(model, "cuda", torch.float16, _float_dtype(model))


def _bf16_autocast(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return Autocast(model, "cuda", torch.bfloat16, _float_dtype(model))


def _half(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    output_dtype = _float_dtype(model)  # before the cast: Module.half converts in place
    return CastFloats(model.half(), torch.float16, output_dtype)


def _prune_structured(
    model: nn.Module, args: tuple, kwargs: dict, calibration: Iterable[tuple] | None, params: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    return prune.prune_structured(model, params["amount"])


def _prune_structured_structure(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return prune.rebuild_structured(model, params["kept"])


def _prune_l1_unstructured(
    model: nn.Module, args: tuple, kwargs: dict, calibration: Iterable[tuple] | None, params: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    return prune.prune_l1_unstructured(model, params["amount"])


def _student(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return distill.student(params, next((p.device for p in model.parameters()), torch.device("cpu")))


def _same_shapes(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, Any]) -> nn.Module:
    return model  # the zeros come with the loaded weights


# Each recipe's module structure, from a private copy of the model: all of `structure`, and all of
# `build` for the recipes that need no data.
_STRUCTURES: dict[str, StructureFn] = {
    "dynamic_int8": _dynamic_int8,
    "static_int8": _static_int8_structure,
    "bf16": _bf16,
    "channels_last": _channels_last,
    "compile": _compile,
    "torchao_int8_compile": _torchao_int8_compile,
    "torchao_int8": _torchao_int8,
    "fp16": _fp16,
    "bf16_autocast": _bf16_autocast,
    "half": _half,
    "prune_structured": _prune_structured_structure,
    "prune_l1_unstructured": _same_shapes,
    "distill": _student,
}
# Recipes whose candidate depends on data (calibration batches, weight norms): build, resolved params.
_DATA_BUILDS: dict[str, DataBuildFn] = {
    "static_int8": _static_int8,
    "prune_structured": _prune_structured,
    "prune_l1_unstructured": _prune_l1_unstructured,
}


# --- helpers -----------------------------------------------------------------------------------


def _resolve(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The recipe's defaults overridden by `params`; unknown or out-of-range params are refused."""
    defaults = DEFAULT_PARAMS.get(name, {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(defaults) or "none"
        raise RecipeError(f"{name} does not take {', '.join(unknown)} (it takes: {accepted})")
    resolved = {**defaults, **params}
    if "amount" in resolved:
        amount = resolved["amount"]
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
            raise RecipeError(f"{name}: amount must be a fraction between 0 and 1, not {amount!r}")
        resolved["amount"] = float(amount)
    if "calibration_batches" in resolved:
        count = resolved["calibration_batches"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise RecipeError(f"{name}: calibration_batches must be a whole number of at least 1, not {count!r}")
    return resolved


def _private_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode: recipes change modules in place, and the caller's must stay as it is."""
    return copy.deepcopy(model).eval()


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating tensors, which its floating outputs have too."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _device_of(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _cast_floats(tree: Any, dtype: torch.dtype) -> Any:
    return tree_map(lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v, tree)


def _to_channels_last(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point():
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


@contextlib.contextmanager
def _quantization_warnings() -> Iterator[None]:
    """Silence torch.ao.quantization's notices here only: it is deprecated but works in torch 2.13 (and
    uses deprecated torch.jit and quantized tensors inside), and `structure` converts an uncalibrated
    graph on purpose (its scales come with the loaded state dict)."""
    with warnings.catch_warnings():
        for deprecated in (r"torch\.ao\.quantization is deprecated", r"`torch\.jit\.[\w.]+` is deprecated"):
            warnings.filterwarnings("ignore", message=deprecated, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max")
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams")
        yield
