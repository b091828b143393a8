"""Candidates on other runtimes (TorchScript, ONNX Runtime): built in the worker, callable like the
model at any batch size, saved as their runtime's whole model with a sha256 and loaded back from it,
refused by name when the model cannot be converted, and judged by `perfguard optimize` like any
other candidate."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from monitor.config import load_config
from monitor.core.catalog import CATALOG
from monitor.examples import models
from monitor.harness import collectors, profiling, reference, variants
from monitor.harness.artifacts import ArtifactError
from monitor.harness.worker import Prepared, _memory_call, _own_profiler, served_call
from monitor.harness.protocol import BenchmarkJob, RecipeStep, Subject, VariantSpec
from monitor.harness.worker_pool import WorkerPool
from monitor.optimize.action import OptimizeRequest, optimize
from monitor.transforms import recipes
from storage.db import Database
from tests.cli_helpers import TESTS_DIR, tiny_model, write_config
from tests.workloads import Spectrum

RUNTIME = [s.name for s in CATALOG if s.runtime]
EXACT = ["torchscript", "onnx_fp32"]
INT8_ERROR = 0.05  # relative L2 error of the output allowed against fp32


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[nn.Module, torch.Tensor, list[tuple[torch.Tensor]] | None]]:
    """model, example batch (in distribution, for the CNN: held-out digits), calibration batches."""
    cnn_eval = models.seed_cnn_eval()
    return {
        "mlp": (models.mlp().eval(), torch.randn(32, 1024, generator=torch.Generator().manual_seed(0)), None),
        "cnn": (models.seed_cnn().eval(), cnn_eval[0][0][:32], [(inputs,) for inputs, _ in cnn_eval]),
    }


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def test_the_runtime_recipes_tested_here_are_the_catalog_ones() -> None:
    assert set(RUNTIME) == {"torchscript", "onnx_fp32", "onnx_int8_dynamic", "onnx_int8_static"}


@pytest.mark.parametrize("case", ["mlp", "cnn"])
@pytest.mark.parametrize("name", RUNTIME)
def test_a_runtime_candidate_follows_the_model_at_any_batch_size_and_loads_back_from_its_artifact(
    name: str, case: str, cases: dict, tmp_path: Path
) -> None:
    model, x, calibration = cases[case]
    with torch.inference_mode():
        want, want_small = model(x), model(x[:5])
    candidate, resolved = recipes.build(name, model, (x,), {}, calibration, {})
    with torch.inference_mode():
        got, got_small = candidate(x), candidate(x[:5])
    allowed = 1e-5 if name in EXACT else INT8_ERROR
    assert relative_error(got, want) <= allowed and relative_error(got_small, want_small) <= allowed
    assert resolved["params"] == sum(p.numel() for p in model.parameters())

    path, digest = variants.save_candidate(candidate, tmp_path / name, name)
    assert path.name == ("model.ts" if name == "torchscript" else "model.onnx")
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    spec = VariantSpec(name=name, steps=[RecipeStep(name, resolved)], weights_path=str(path), weights_sha256=digest)
    loaded = variants.build_variant(model, spec, (x,), {}, "cpu")
    with torch.inference_mode():
        assert torch.equal(loaded(x), got)
    params, size_mb = collectors.model_size(loaded)
    assert params == resolved["params"] and size_mb == pytest.approx(path.stat().st_size / 2**20)


@pytest.mark.parametrize("name", ["onnx_fp32", "torchscript"])
def test_a_runtime_variant_is_timed_as_its_runtime_serves_it(name: str, cases: dict) -> None:
    """The worker's timed call of an ONNX Runtime variant is its session fed ready arrays (numpy out,
    no tensor conversion in the timing); TorchScript's is the scripted module; an eager model's is
    the model. Each gives the model's output."""
    model, x, calibration = cases["mlp"]
    candidate, _ = recipes.build(name, model, (x,), {}, calibration, {})
    with torch.inference_mode():
        want = model(x)
        served, eager = served_call(candidate, (x,), {})(), served_call(model, (x,), {})()
    if name == "onnx_fp32":
        assert isinstance(served, list) and isinstance(served[0], np.ndarray)
        served = torch.from_numpy(served[0])
    else:
        assert isinstance(served, torch.Tensor)
    assert relative_error(served, want) <= 1e-5 and torch.equal(eager, want)


def test_an_onnx_variant_s_call_memory_is_read_on_a_session_that_has_not_run(cases: dict) -> None:
    """ONNX Runtime keeps a call's workspace in its arena after the first call: the timed session's
    later calls take no new memory, a fresh session's first call shows what a call needs."""
    model, x, calibration = cases["cnn"]
    candidate, _ = recipes.build("onnx_fp32", model, (x,), {}, calibration, {})
    warm = served_call(candidate, (x,), {})
    for _ in range(3):
        warm()
    warm_mb = collectors.forward_peak_mb(warm, "cpu")
    cold = candidate.cold_call((x,), {})
    assert cold is not None
    cold_mb = collectors.forward_peak_mb(cold, "cpu")
    assert warm_mb is not None and cold_mb is not None
    assert cold_mb > 1.0 and cold_mb > warm_mb + 1.0, (cold_mb, warm_mb)


def test_the_worker_times_an_onnx_variant_as_served_and_reads_its_memory_on_a_cold_session(cases: dict) -> None:
    model, x, calibration = cases["mlp"]
    candidate, _ = recipes.build("onnx_fp32", model, (x,), {}, calibration, {})
    job = BenchmarkJob(model="m", batch_size=32, subjects=[Subject("onnx", "monitor.examples.models:mlp")])
    onnx, eager = Prepared(job.subjects[0], job, model=candidate, inputs=((x,), {})), Prepared(
        job.subjects[0], job, model=model, inputs=((x,), {}))
    assert isinstance(onnx.call()[0], np.ndarray)  # the session itself, no tensor conversion
    assert _memory_call(onnx) is not onnx.call and _memory_call(eager) is eager.call
    # Profiled by ONNX Runtime's own profiler (torch's sees nothing inside a session): its operators.
    own = _own_profiler(onnx)
    assert own is not None and _own_profiler(eager) is None
    profiles = profiling.profile_subjects({"onnx": onnx.call, "eager": eager.call}, "cpu", {"onnx": own})
    gemms = [r for r in profiles["onnx"] if r["op"] == "onnxruntime::Gemm"]
    assert gemms and all(r["calls"] > 0 and r["self_us"] > 0 for r in gemms), profiles["onnx"]
    assert any(r["op"] == "aten::addmm" for r in profiles["eager"])


def test_a_transformer_encoder_exports_without_its_fused_fast_path() -> None:
    """Under no_grad a TransformerEncoderLayer runs one fused operator that ONNX cannot express; the
    export must trace the layer's own operators."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(0))
    candidate, _ = recipes.build("onnx_fp32", model, (x,), {}, None, {})
    with torch.inference_mode():
        assert relative_error(candidate(x), model(x)) <= 1e-5


def test_an_altered_runtime_artifact_is_refused_before_it_is_loaded(cases: dict, tmp_path: Path) -> None:
    model, x, _ = cases["mlp"]
    candidate, resolved = recipes.build("onnx_fp32", model, (x,), {}, None, {})
    path, digest = variants.save_candidate(candidate, tmp_path, "onnx_fp32")
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    spec = VariantSpec(name="v", steps=[RecipeStep("onnx_fp32", resolved)], weights_path=str(path),
                       weights_sha256=digest)
    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        variants.build_variant(model, spec, (x,), {}, "cpu")


def test_a_variant_on_onnx_runtime_is_its_own_frozen_reference(cases: dict, tmp_path: Path) -> None:
    """Its ONNX model is already frozen: no trace or export of a module that calls ONNX Runtime."""
    model, x, _ = cases["mlp"]
    candidate, _ = recipes.build("onnx_fp32", model, (x,), {}, None, {})
    ref = reference.freeze(candidate, (x,), {}, tmp_path, "monitor.examples.models:mlp")
    assert (ref.kind, Path(ref.path).name, ref.fallbacks) == ("onnx", "reference.onnx", [])
    with torch.inference_mode():
        assert torch.equal(reference.load(ref, "cpu")(x), candidate(x))


class Keyed(nn.Module):
    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return x * scale


@pytest.mark.parametrize("name", ["onnx_fp32", "onnx_int8_dynamic", "onnx_int8_static"])
def test_a_model_that_cannot_be_exported_is_a_recipe_error_that_says_why(name: str) -> None:
    with pytest.raises(recipes.RecipeError, match=rf"^{name}: torch.onnx cannot export Spectrum \(.*fft"):
        recipes.build(name, Spectrum(), (torch.randn(4, 8, 8),), {}, None, {})


def test_a_model_called_with_keywords_is_refused_by_the_runtimes() -> None:
    for name in RUNTIME:
        with pytest.raises(recipes.RecipeError, match=rf"^{name}: runs models called with positional tensors only"):
            recipes.build(name, Keyed(), (torch.randn(2, 3),), {"scale": 2.0}, None, {})


def test_a_runtime_recipe_has_no_structure_to_rebuild(cases: dict) -> None:
    model, x, _ = cases["mlp"]
    with pytest.raises(recipes.RecipeError, match="loaded from its saved artifact"):
        recipes.structure("onnx_fp32", model, (x,), {}, {})


def test_onnx_on_cuda_is_refused_without_the_cuda_provider() -> None:
    import onnxruntime

    reason = recipes.unavailable("onnx_fp32", "cuda:0", [])
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available():
        assert reason is None
    else:
        assert reason is not None and ("CUDA" in reason)


@pytest.mark.slow
def test_optimize_builds_times_and_judges_runtime_candidates_and_records_a_failed_export(
    tmp_path: Path, workers: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real worker: each runtime candidate is saved as its runtime's file with its sha256,
    timed beside the current variant and judged with numbers; a model that cannot be exported is a
    rejected candidate with its reason, not a crash."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # workers inherit it
    tried = ("torchscript", "onnx_fp32", "onnx_int8_dynamic")
    mlp = tiny_model("mlp", factory="monitor.examples.models:mlp", inputs=[{"shape": [8, 1024]}], max_time_s=0.3,
                     threads=1)
    fft = tiny_model("fft", factory="workloads:spectrum", inputs=[{"shape": [4, 8, 8]}], max_time_s=0.3, threads=1)
    loaded = load_config(write_config(tmp_path / "perfguard.toml", [mlp, fft]))
    with Database.open(loaded.storage_url()) as db:
        action = optimize(db, loaded, OptimizeRequest(model="mlp", action=None, recipes=tried), pool=workers)
        assert [c["recipe"] for c in action.candidates] == list(tried), action.reason
        for candidate in action.candidates:
            assert candidate["error"] is None, candidate["error"]
            assert candidate["ratio_p50"] is not None and candidate["p50_ms"] > 0 and candidate["size_mb"] > 0
            assert candidate["accepted"] or candidate["reasons"]  # judged, with its numbers
            spec = candidate["variant"]
            assert Path(spec["weights_path"]).suffix == (".ts" if candidate["recipe"] == "torchscript" else ".onnx")
        # Only the promoted candidate's file is kept; it is the one its sha256 names.
        kept = [c["variant"] for c in action.candidates if Path(c["variant"]["weights_path"]).exists()]
        assert len(kept) == (action.status == "accepted")
        for spec in kept:
            assert hashlib.sha256(Path(spec["weights_path"]).read_bytes()).hexdigest() == spec["weights_sha256"]

        failed = optimize(db, loaded, OptimizeRequest(model="fft", action=None, recipes=("onnx_fp32",)), pool=workers)
        (candidate,) = failed.candidates
        assert failed.status == "rejected" and "torch.onnx cannot export" in candidate["error"]


@pytest.mark.slow
def test_the_parent_of_an_onnx_optimisation_imports_neither_torch_nor_onnxruntime(tmp_path: Path) -> None:
    """The daemon and the CLI share the parent side: its memory and threads stay free of both runtimes,
    whatever recipe the worker builds."""
    write_config(tmp_path / "perfguard.toml", [tiny_model("tiny")])
    script = textwrap.dedent("""
        import sys
        from click.testing import CliRunner
        from monitor.cli import main
        result = CliRunner().invoke(main, ["optimize", "tiny", "--recipe", "onnx_fp32", "--json"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert '"recipe": "onnx_fp32"' in result.output, result.output
        loaded = sorted(m for m in ("torch", "onnxruntime", "onnx") if m in sys.modules)
        assert not loaded, f"the parent imported {loaded}"
        print("clean")
    """)
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("clean"), done.stderr[-3000:]
