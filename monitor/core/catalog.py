"""The recipes perfguard can try, described without torch: names, what they suit, where they run.

The parent (rules, CLI, the candidate search) picks and orders recipes from this catalog; the worker
builds them (recipes.py, the only place that imports torch for them). A recipe is a hypothesis: on
another CPU or GPU the same one may be slower, so every candidate is benchmarked before it is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["requantize", "prune", "distill"]
ACTIONS: tuple[Action, ...] = ("requantize", "prune", "distill")
Family = Literal["linear", "conv", "attention"]


@dataclass(frozen=True, slots=True)
class RecipeSpec:
    """One way to build a faster candidate from a model.

    `suits` names where it helps (Linear layers, convolutions...), matched against the diagnosis;
    `exact` recipes change only layout, compilation or runtime, so the output is the model's (up to
    float reordering) and no accuracy is at stake. `cpu_flags`: any one of them must be present (e.g. native
    bf16); `needs`: a Python package that must be importable in the worker. `by_default`: tried when
    a rule or the CLI names no recipe (L1 unstructured pruning, which speeds nothing up on dense
    kernels, only when asked).
    """

    name: str
    action: Action
    devices: tuple[str, ...]  # "cpu", "cuda"
    suits: tuple[Family, ...]  # the operator families it speeds up; () for any model
    exact: bool
    description: str
    cpu_flags: tuple[str, ...] = ()
    needs: str | None = None
    by_default: bool = True
    compiles: bool = False  # torch.compile: slow first call, nothing to save but the recipe
    # Another runtime runs the candidate ("onnxruntime", "torchscript"): its saved artifact is the whole
    # model in that runtime's format, loaded as it is, not a state dict for a rebuilt structure.
    runtime: str | None = None


CATALOG: tuple[RecipeSpec, ...] = (
    RecipeSpec("dynamic_int8", "requantize", ("cpu",), ("linear", "attention"), False,
               "int8 weights, activations quantized on the fly (Linear): torch.ao quantize_dynamic"),
    RecipeSpec("static_int8", "requantize", ("cpu",), ("conv", "linear"), False,
               "int8 weights and activations calibrated on eval data or the inputs (FX graph mode, x86)"),
    RecipeSpec("bf16", "requantize", ("cpu",), (), False,
               "bfloat16 weights and activations, on CPUs with native bf16 (AMX, AVX512-BF16)",
               cpu_flags=("amx_bf16", "avx512_bf16")),
    RecipeSpec("channels_last", "requantize", ("cpu", "cuda"), ("conv",), True,
               "NHWC memory layout for convolutions; same numbers"),
    # ONNX Runtime before torch.compile: measured faster on the MLP and the seed CNN here (bench/
    # handbuilt.py), and cheaper to build; with max_candidates = 4 the order decides what is tried.
    RecipeSpec("onnx_fp32", "requantize", ("cpu", "cuda"), (), True,
               "export with torch.onnx, run with ONNX Runtime (all graph optimisations); same numbers",
               needs="onnxruntime", runtime="onnxruntime"),
    RecipeSpec("onnx_int8_dynamic", "requantize", ("cpu",), ("linear", "attention"), False,
               "ONNX Runtime int8 weights, activations quantized on the fly (its quantize_dynamic)",
               needs="onnxruntime", runtime="onnxruntime"),
    RecipeSpec("onnx_int8_static", "requantize", ("cpu",), ("conv", "linear"), False,
               "ONNX Runtime int8 weights and activations (QDQ), calibrated on eval data or the inputs",
               needs="onnxruntime", runtime="onnxruntime"),
    RecipeSpec("torchscript", "requantize", ("cpu", "cuda"), (), True,
               "torch.jit.trace, freeze and optimize_for_inference; same numbers (only when asked: as fast as "
               "onnx_fp32 at best here)", by_default=False, runtime="torchscript"),
    RecipeSpec("compile", "requantize", ("cpu", "cuda"), (), True,
               "torch.compile (inductor); same numbers, slow first call", compiles=True),
    RecipeSpec("torchao_int8_compile", "requantize", ("cpu", "cuda"), ("linear", "attention"), False,
               "torchao int8 dynamic activations + int8 weights, with torch.compile (eager it is slower)",
               needs="torchao", compiles=True),
    RecipeSpec("torchao_int8", "requantize", ("cpu", "cuda"), ("linear", "attention"), False,
               "torchao int8 dynamic activations + int8 weights, eager (slower than fp32 here: only when asked)",
               needs="torchao", by_default=False),
    RecipeSpec("fp16", "requantize", ("cuda",), (), False, "float16 autocast on the GPU"),
    RecipeSpec("bf16_autocast", "requantize", ("cuda",), (), False, "bfloat16 autocast on the GPU"),
    RecipeSpec("half", "requantize", ("cuda",), (), False, "float16 weights and inputs (.half())"),
    RecipeSpec("prune_structured", "prune", ("cpu", "cuda"), (), False,
               "remove the output channels/neurons with the smallest L1 norm and shrink the next layer"),
    RecipeSpec("prune_l1_unstructured", "prune", ("cpu", "cuda"), (), False,
               "zero the smallest weights (no speed-up on dense kernels; only when asked)",
               by_default=False),
    RecipeSpec("distill", "distill", ("cpu", "cuda"), (), False,
               "train the model's smaller student (its distill table) on the model's soft targets, time-bounded"),
)
RECIPES = {spec.name: spec for spec in CATALOG}


def device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def cuda_index(device: str) -> int:
    """The index of a CUDA device as the config names it ("cuda" means cuda:0, as in torch)."""
    return int(device.partition(":")[2] or 0)


def runtime_of(name: str | None) -> str | None:
    """The runtime a recipe's candidate runs on when it is not eager torch; None for torch, no recipe
    or a recipe this catalog does not know (an old action's)."""
    spec = RECIPES.get(name or "")
    return None if spec is None else spec.runtime


def recipe(name: str) -> RecipeSpec:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
