"""Frozen reference copies of a model, written once and timed later beside the live model.

When a regression is suspected, timing the copy that produced the baseline and the current model
interleaved in one worker tells the two causes apart: if the copy slowed down too, the host or
environment changed; if only the model did, the model regressed. That only works if the copy is
frozen as far as it can be, so `freeze` tries, in order:
- a TorchScript trace (`reference.ts`): the graph and weights, independent of model code, refused
  on any TracerWarning (data-dependent control flow or numpy calls would be silently baked in);
- `torch.jit.script` (`reference.ts`), which keeps control flow (a transformer's fast-path checks);
- `torch.export` (`reference.pt2`): the ATen graph and weights;
- the state dict (`reference.state.pt`) plus the factory: weights only, the code is rebuilt at load.
A variant that runs on ONNX Runtime is frozen already: its own ONNX model is the copy (`reference.onnx`).
TorchScript comes first because every scheduled run loads the copy and times it beside the model:
loading an exported program imports torch's compiler stack (1.0 s per run here, against 8 ms for a
trace), and it adds 30-80 us per call (4.5 us for a trace of the same tiny model), which would
dilute a small model's changes in the ratio.
Each candidate is loaded back and must reproduce the live model's output before it is accepted.

Runs inside the worker only; torch is imported inside the functions so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from monitor.core.import_paths import resolve
from monitor.harness.artifacts import ArtifactError, open_verified, sha256_of
from monitor.harness.protocol import ArtifactKind, ArtifactRef

FILE_NAMES: dict[ArtifactKind, str] = {
    "onnx": "reference.onnx",
    "exported": "reference.pt2",
    "torchscript": "reference.ts",
    "state_dict": "reference.state.pt",
}
CHECK_FILE = "reference.check.pt"  # the example inputs and the copy's outputs on them
# Relative tolerance of the load-back check by output dtype (absolute: the same, times the output's
# scale): exported graphs may decompose ops and TorchScript may fuse them, which reorders float math.
TOLERANCE = {"float64": 1e-7, "float32": 1e-4, "complex64": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}
REASON_CHARS = 240


class TraceRefused(RuntimeError):
    """torch.jit.trace warned that its trace may not match the model on other inputs."""


def freeze(
    model: Any, example_args: tuple[Any, ...], example_kwargs: dict[str, Any], directory: str | Path, factory: str
) -> ArtifactRef:
    """Write the most frozen faithful copy of `model` into `directory` and return a reference to it.

    Must be called outside `torch.inference_mode` with ordinary tensors: export and tracing run the
    model as autograd would. A refused kind's reason is kept in `fallbacks`; if no kind reproduces
    the model's output (a model whose output is random, say), ArtifactError lists them all.
    """
    import torch

    if torch.is_inference_mode_enabled():
        raise RuntimeError("reference.freeze must run outside torch.inference_mode")
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    device = _device_of(model)
    with torch.inference_mode():
        expected = model(*example_args, **example_kwargs)
    fallbacks: list[str] = []
    for kind, name, save in _ways_to_save(model, example_args, example_kwargs):
        final = folder / FILE_NAMES[kind]
        fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "w+b") as handle:
                save(handle)
                handle.flush()
                os.fsync(handle.fileno())
                handle.seek(0)
                sha256 = sha256_of(handle)
                handle.seek(0)
                copy = _load(kind, handle, factory, device)
            with torch.inference_mode():
                mismatch = _mismatch(copy(*example_args, **example_kwargs), expected)
            if mismatch:
                raise ArtifactError(mismatch)
        except Exception as exc:  # noqa: BLE001 - any failure just means: try the next kind
            temp.unlink(missing_ok=True)
            fallbacks.append(f"{name}: {short_reason(exc)}")
            continue
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        os.replace(temp, final)
        check = _write_check(folder, example_args, example_kwargs, copy)
        _fsync_dir(folder)
        return ArtifactRef(
            kind=kind, path=str(final), sha256=sha256, factory=factory,
            torch_version=torch.__version__, fallbacks=fallbacks,
            check_path=None if check is None else str(check[0]), check_sha256=None if check is None else check[1],
        )
    raise ArtifactError(f"no reference copy of {factory} reproduces its output: " + "; ".join(fallbacks))


def load(ref: ArtifactRef, device: str) -> Any:
    """The frozen model, ready to call on `device`; refuses a missing file or one whose hash differs.

    The file is hashed and loaded through one open handle, so it cannot be swapped in between. The
    hash matters: a state dict is read with `weights_only=True`, but `torch.export.load` may unpickle
    parts of a .pt2 archive without that restriction, so only bytes we wrote may reach it.
    """
    with open_verified(Path(ref.path), ref.sha256, "reference artifact") as handle:
        return _load(ref.kind, handle, ref.factory, device)


def verify(ref: ArtifactRef, copy: Any, device: str) -> None:
    """Refuse a loaded copy that no longer computes what it computed when frozen.

    A library upgrade may load an old copy and run it differently (a changed decomposition, a kernel
    with another rounding): timing such a copy against the live model would compare two different
    things. The saved example inputs are fed to it and its outputs compared with the saved ones,
    with the tolerance of the freeze's own check. A copy frozen before check files has nothing to
    compare with and passes.
    """
    import torch

    if ref.check_path is None:
        return
    with open_verified(Path(ref.check_path), ref.check_sha256, "reference check file") as handle:
        saved = torch.load(handle, map_location=device, weights_only=True)
    with torch.inference_mode():
        mismatch = _mismatch(copy(*saved["args"], **saved["kwargs"]), saved["outputs"])
    if mismatch:
        raise ArtifactError(f"the copy no longer reproduces its frozen output ({mismatch})")


def _write_check(folder: Path, args: tuple[Any, ...], kwargs: dict[str, Any], copy: Any) -> tuple[Path, str] | None:
    """Save the example inputs and the accepted copy's outputs beside it; None when they cannot be
    saved as plain tensors and containers (then later loads are not checked against them)."""
    import torch

    with torch.inference_mode():
        outputs = copy(*args, **kwargs)
    final = folder / CHECK_FILE
    fd, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w+b") as handle:
            torch.save({"args": tuple(args), "kwargs": dict(kwargs), "outputs": outputs}, handle)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            torch.load(handle, weights_only=True)  # what verify() will need to read back
            handle.seek(0)
            sha256 = sha256_of(handle)
    except Exception:  # noqa: BLE001 - inputs that are not plain tensors: no check, the copy still serves
        temp.unlink(missing_ok=True)
        return None
    os.replace(temp, final)
    return final, sha256


def _ways_to_save(
    model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[tuple[ArtifactKind, str, Callable[[IO[bytes]], None]]]:
    """The kinds of copy `freeze` tries, most frozen first: (kind, name in its reasons, writer)."""
    import torch

    from monitor.transforms import runtimes

    ways: list[tuple[ArtifactKind, str, Callable[[IO[bytes]], None]]] = [
        ("torchscript", "torchscript/trace", lambda f: _save_traced(model, args, kwargs, f)),
        ("torchscript", "torchscript/script", lambda f: _save_scripted(model, f)),
        ("exported", "exported", lambda f: _save_exported(model, args, kwargs, f)),
        ("state_dict", "state_dict", lambda f: torch.save(model.state_dict(), f)),
    ]
    if isinstance(model, runtimes.OnnxModule):  # frozen already: its ONNX model is the copy
        ways.insert(0, ("onnx", "onnx", lambda f: runtimes.save(model, f)))
    return ways


def _load(kind: ArtifactKind, handle: IO[bytes], factory: str, device: str) -> Any:
    import torch

    if kind == "onnx":
        from monitor.transforms import runtimes

        return runtimes.load("onnx_fp32", handle, device, {})
    if kind == "exported":
        return torch.export.load(handle).module().to(device)  # an exported module refuses .eval()
    if kind == "torchscript":
        with _jit_warnings():
            return torch.jit.load(handle, map_location=device).eval()
    if kind == "state_dict":
        state = torch.load(handle, map_location=device, weights_only=True)
        module = resolve(factory)().to(device)
        module.load_state_dict(state)
        return module.eval()
    raise ArtifactError(f"unknown artifact kind {kind!r}")


def _save_exported(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], handle: IO[bytes]) -> None:
    import torch

    torch.export.save(torch.export.export(model, tuple(args), dict(kwargs)), handle)


def _save_traced(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], handle: IO[bytes]) -> None:
    import torch

    if args and kwargs:
        raise ValueError("torch.jit.trace takes positional or keyword example inputs, not both")
    with _jit_warnings(), warnings.catch_warnings(record=True) as caught:
        # A TracerWarning means the trace recorded a Python value computed from a tensor (a branch
        # taken, a numpy result) as a constant: the copy would be fast and wrong on other inputs.
        # Recorded, not raised: raised inside torch's C code it surfaces as an opaque SystemError.
        # Torch's own filter for such warnings from inside torch (outside torch.jit) is kept.
        warnings.filterwarnings("always", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="torch.(?!jit)")
        if kwargs:
            traced = torch.jit.trace(model, example_kwarg_inputs=dict(kwargs))
        else:
            traced = torch.jit.trace(model, tuple(args))
    refused = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if refused:
        first_sentence = str(refused[0].message).split(". ")[0].rstrip(".")
        raise TraceRefused(first_sentence)
    with _jit_warnings():
        torch.jit.save(traced, handle)


def _save_scripted(model: Any, handle: IO[bytes]) -> None:
    import torch

    with _jit_warnings():
        torch.jit.save(torch.jit.script(model), handle)


@contextlib.contextmanager
def _jit_warnings() -> Iterator[None]:
    """Silence torch.jit's deprecation notices (torch 2.13 deprecates it) here only, not process-wide."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.[\w.]+` is deprecated", category=DeprecationWarning
        )
        yield


def _mismatch(actual: Any, expected: Any) -> str | None:
    """Why the copy's output is not the live model's (tensor leaves compared), or None if it is."""
    import torch
    from torch.utils._pytree import tree_leaves

    got, want = tree_leaves(actual), tree_leaves(expected)
    if len(got) != len(want):
        return f"the copy returns {len(got)} outputs, the model {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if not isinstance(w, torch.Tensor):
            if g != w:
                return f"output {i} is {g!r}, the model's is {w!r}"
            continue
        if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            return f"output {i} has a different type, shape or dtype than the model's"
        if not (w.is_floating_point() or w.is_complex()):
            if not torch.equal(g, w):
                return f"output {i} differs from the model's"
            continue
        rtol = TOLERANCE.get(str(w.dtype).removeprefix("torch."), 1e-4)
        scale = float(w.abs().max()) if w.numel() else 0.0
        if not torch.allclose(g, w, rtol=rtol, atol=rtol * max(scale, 1e-6), equal_nan=True):
            worst = float((g - w).abs().max())
            return f"output {i} differs from the model's by up to {worst:.3g} (scale {scale:.3g}, rtol {rtol:g})"
    return None


def _device_of(model: Any) -> str:
    for tensor in (*model.parameters(), *model.buffers()):
        return str(tensor.device)
    return "cpu"


def short_reason(exc: BaseException) -> str:
    """One short line: the exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable, so a crash cannot leave the ref naming a file that is gone."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
