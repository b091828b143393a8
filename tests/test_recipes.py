"""Recipe builders: each CPU recipe makes a candidate callable like the model, leaves the model alone,
stays close to its output, and can be rebuilt from a fresh model and a saved state dict."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from monitor.examples import models
from monitor.core.catalog import CATALOG, RECIPES
from monitor.transforms import recipes

EXACT = ["channels_last"]
APPROXIMATE = ["dynamic_int8", "static_int8", "bf16"]
PRUNING = ["prune_structured", "prune_l1_unstructured"]
# Relative L2 error of the output allowed, against fp32.
LOOSE_ERROR = {"dynamic_int8": 0.05, "static_int8": 0.08, "bf16": 0.02}
AGREEMENT = 0.97


@pytest.fixture(scope="module")
def mlp() -> nn.Module:
    return models.mlp()


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return models.seed_cnn()


@pytest.fixture(scope="module")
def cnn_eval() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return models.seed_cnn_eval()


def cases(mlp: nn.Module, cnn: nn.Module, cnn_eval: list) -> dict[str, tuple[nn.Module, torch.Tensor, list | None]]:
    """model, example batch (in distribution, for the CNN: held-out digits), calibration batches."""
    batch = torch.randn(32, 1024, generator=torch.Generator().manual_seed(0))
    return {
        "mlp": (mlp, batch, None),
        "cnn": (cnn, cnn_eval[0][0][:32], [(inputs,) for inputs, _ in cnn_eval]),
    }


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def reloaded(name: str, model: nn.Module, args: tuple, candidate: nn.Module, params: dict[str, Any]) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(candidate.state_dict(), buffer)
    buffer.seek(0)
    rebuilt = recipes.structure(name, model, args, {}, params)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    return rebuilt


def test_the_cpu_recipes_tested_here_are_the_catalog_cpu_recipes_that_need_no_extra_package() -> None:
    # (the recipes that run on another runtime are tested in test_runtimes.py, distill in test_distill.py)
    testable = {s.name for s in CATALOG if "cpu" in s.devices and s.needs is None and not s.runtime}
    assert testable == set(EXACT + APPROXIMATE + PRUNING + ["compile", "distill"])


@pytest.mark.parametrize("case", ["mlp", "cnn"])
@pytest.mark.parametrize("name", EXACT + APPROXIMATE + PRUNING)
def test_a_cpu_recipe_builds_a_candidate_like_the_model_and_leaves_the_model_untouched(
    name: str, case: str, mlp: nn.Module, cnn: nn.Module, cnn_eval: list
) -> None:
    model, x, calibration = cases(mlp, cnn, cnn_eval)[case]
    before = snapshot(model)
    with torch.inference_mode():
        expected = model(x)

    candidate, params = recipes.build(name, model, (x,), {}, calibration, {})

    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{name} changed the model's {key}"
    with torch.inference_mode():
        assert torch.equal(model(x), expected)
        got = candidate(x)
    assert candidate is not model
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if name in EXACT:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    elif name in APPROXIMATE:
        assert relative_error(got, expected) < LOOSE_ERROR[name]


@pytest.mark.parametrize("case", ["mlp", "cnn"])
@pytest.mark.parametrize("name", EXACT + APPROXIMATE + PRUNING)
def test_structure_and_a_saved_state_dict_reproduce_the_candidate_exactly(
    name: str, case: str, mlp: nn.Module, cnn: nn.Module, cnn_eval: list
) -> None:
    model, x, calibration = cases(mlp, cnn, cnn_eval)[case]
    candidate, params = recipes.build(name, model, (x,), {}, calibration, {})

    rebuilt = reloaded(name, model, (x,), candidate, params)

    with torch.inference_mode():
        assert torch.equal(rebuilt(x), candidate(x))


@pytest.mark.parametrize("name", APPROXIMATE)
def test_int8_and_bf16_candidates_agree_with_fp32_on_the_seed_cnn_top1(
    name: str, cnn: nn.Module, cnn_eval: list
) -> None:
    calibration = [(inputs,) for inputs, _ in cnn_eval]
    candidate, _ = recipes.build(name, cnn, (cnn_eval[0][0],), {}, calibration, {})
    agree = total = 0
    with torch.inference_mode():
        for inputs, _ in cnn_eval:
            agree += int((candidate(inputs).argmax(1) == cnn(inputs).argmax(1)).sum())
            total += len(inputs)
    assert agree / total >= AGREEMENT


class SmallEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_dynamic_int8_runs_a_transformer_encoder_with_the_mha_fast_path_off_only_inside_its_call() -> None:
    torch.manual_seed(0)
    encoder = SmallEncoder().eval()
    x = torch.randn(4, 16, 64)
    assert torch.backends.mha.get_fastpath_enabled()

    candidate, _ = recipes.build("dynamic_int8", encoder, (x,), {}, None, {})

    with torch.inference_mode():
        got, want = candidate(x), encoder(x)
    assert torch.backends.mha.get_fastpath_enabled(), "the process-global switch must be restored"
    assert relative_error(got, want) < 0.05
    with torch.inference_mode():
        assert torch.equal(reloaded("dynamic_int8", encoder, (x,), candidate, {})(x), got)


def test_the_mha_fast_path_switch_is_restored_when_the_candidate_raises() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not torch.backends.mha.get_fastpath_enabled()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        recipes.WithoutMhaFastpath(Fails())(torch.zeros(1))
    assert torch.backends.mha.get_fastpath_enabled()


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def test_dynamic_int8_leaves_an_lstm_in_float_so_that_the_candidate_loads_with_weights_only() -> None:
    torch.manual_seed(0)
    tagger = Tagger().eval()
    x = torch.randn(3, 7, 16)

    candidate, params = recipes.build("dynamic_int8", tagger, (x,), {}, None, {})

    assert type(candidate.lstm) is nn.LSTM and type(candidate.head) is not nn.Linear
    with torch.inference_mode():
        got = candidate(x)
        assert relative_error(got, tagger(x)) < 0.05
        assert torch.equal(reloaded("dynamic_int8", tagger, (x,), candidate, params)(x), got)


def test_dynamic_int8_quantizes_a_model_that_is_one_linear() -> None:
    linear = nn.Linear(16, 4).eval()
    x = torch.randn(2, 16)
    candidate, params = recipes.build("dynamic_int8", linear, (x,), {}, None, {})
    assert not any(type(m) is nn.Linear for m in candidate.modules())
    with torch.inference_mode():
        assert torch.equal(reloaded("dynamic_int8", linear, (x,), candidate, params)(x), candidate(x))


def test_dynamic_int8_refuses_a_model_without_linear_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(recipes.RecipeError, match="dynamic_int8: .*no Linear"):
        recipes.build("dynamic_int8", model, (torch.randn(1, 3, 8, 8),), {}, None, {})


def test_static_int8_names_itself_when_fx_cannot_trace_the_model() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else -x

    with pytest.raises(recipes.RecipeError, match="static_int8: torch.fx cannot trace Branchy"):
        recipes.build("static_int8", Branchy().eval(), (torch.ones(2, 4),), {}, None, {})


def test_static_int8_calibrates_on_at_most_the_batches_asked_for(mlp: nn.Module) -> None:
    drawn: list[int] = []

    def batches() -> Iterator[tuple[torch.Tensor]]:
        for i in range(100):
            drawn.append(i)
            yield (torch.randn(8, 1024),)

    x = torch.randn(8, 1024)
    _, params = recipes.build("static_int8", mlp, (x,), {}, batches(), {"calibration_batches": 3})
    assert params["calibration_batches"] == 3 and len(drawn) == 3
    assert params["backend"] == "x86"
    _, params = recipes.build("static_int8", mlp, (x,), {}, None, {})
    assert params["calibration_batches"] == 1


def test_bf16_casts_only_floating_inputs_and_returns_the_model_dtype() -> None:
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 4)).eval()
    tokens = torch.randint(0, 50, (2, 5))

    candidate, _ = recipes.build("bf16", model, (tokens,), {}, None, {})

    with torch.inference_mode():
        got, want = candidate(tokens), model(tokens)
    assert got.dtype == torch.float32 and relative_error(got, want) < 0.02
    assert all(p.dtype == torch.bfloat16 for p in candidate.parameters())


def test_channels_last_converts_the_convolution_weights_and_the_inputs(cnn: nn.Module, cnn_eval: list) -> None:
    x = cnn_eval[0][0]
    candidate, _ = recipes.build("channels_last", cnn, (x,), {}, None, {})
    conv_weight = candidate.model.conv1.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    assert cnn.conv1.weight.is_contiguous()


def test_half_casts_weights_and_inputs_and_returns_the_model_dtype() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(4, 8)

    candidate, params = recipes.build("half", model, (x,), {}, None, {})  # fp16 matmuls run on CPU too

    assert all(p.dtype == torch.float16 for p in candidate.parameters())
    with torch.inference_mode():
        got = candidate(x)
        assert got.dtype == torch.float32 and relative_error(got, model(x)) < 0.01
        assert torch.equal(reloaded("half", model, (x,), candidate, params)(x), got)


@pytest.mark.parametrize(("name", "dtype"), [("fp16", torch.float16), ("bf16_autocast", torch.bfloat16)])
def test_gpu_autocast_recipes_wrap_the_model_in_cuda_autocast_and_keep_its_weights(
    name: str, dtype: torch.dtype
) -> None:
    model = nn.Linear(8, 2).eval()
    candidate = recipes.structure(name, model, (torch.randn(1, 8),), {}, {})
    assert isinstance(candidate, recipes.Autocast)
    assert (candidate.device_type, candidate.dtype, candidate.output_dtype) == ("cuda", dtype, torch.float32)
    assert set(candidate.state_dict()) == {"model.weight", "model.bias"}
    assert candidate.model.weight.dtype == torch.float32


@pytest.mark.slow
def test_compile_is_exact_warmed_up_in_build_and_round_trips_through_structure() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)

    candidate, params = recipes.build("compile", model, (x,), {}, None, {})

    assert params["compile_s"] > 0
    with torch.inference_mode():
        got = candidate(x)
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(reloaded("compile", model, (x,), candidate, params)(x), got)


def test_structured_pruning_through_build_reports_kept_widths_and_skipped_pairs(
    cnn: nn.Module, cnn_eval: list
) -> None:
    candidate, params = recipes.build("prune_structured", cnn, (cnn_eval[0][0],), {}, None, {"amount": 0.5})
    assert params["amount"] == 0.5
    assert params["kept"] == {"conv1": 8, "fc1": 64}
    assert "conv2" in params["skipped"]
    assert params["params_after"] < params["params_before"]


def test_unstructured_pruning_through_build_reports_its_sparsity(mlp: nn.Module) -> None:
    _, params = recipes.build("prune_l1_unstructured", mlp, (torch.randn(2, 1024),), {}, None, {"amount": 0.7})
    assert params["sparsity"] == pytest.approx(0.7, abs=0.01)


def test_a_model_with_nothing_to_prune_is_a_recipe_error() -> None:
    with pytest.raises(recipes.RecipeError, match="prune_structured: nothing to prune"):
        recipes.build("prune_structured", nn.Linear(4, 2).eval(), (torch.randn(1, 4),), {}, None, {})


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("prune_structured", {"amount": 1.5}, "amount must be a fraction"),
        ("prune_structured", {"fraction": 0.2}, "does not take fraction"),
        ("static_int8", {"calibration_batches": 0}, "calibration_batches must be"),
        ("bf16", {"amount": 0.2}, r"takes: none"),
    ],
)
def test_params_a_recipe_does_not_take_or_out_of_range_are_refused(
    name: str, params: dict[str, Any], match: str, mlp: nn.Module
) -> None:
    with pytest.raises(recipes.RecipeError, match=match):
        recipes.build(name, mlp, (torch.randn(2, 1024),), {}, None, params)


@pytest.mark.parametrize("name", ["fp16", "bf16_autocast", "half"])
def test_cuda_only_recipes_are_refused_on_cpu(name: str) -> None:
    reason = recipes.unavailable(name, "cpu", ["avx512_bf16", "amx_bf16"])
    assert reason is not None and "cuda" in reason and "cpu" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch can use CUDA here")
def test_gpu_recipes_are_refused_on_cuda_when_torch_cannot_use_it() -> None:
    reason = recipes.unavailable("half", "cuda", [])
    assert reason is not None and "needs CUDA" in reason


def test_bf16_is_refused_without_a_native_bf16_cpu_flag() -> None:
    reason = recipes.unavailable("bf16", "cpu", ["avx2", "avx512f"])
    assert reason is not None and "avx512_bf16" in reason
    assert recipes.unavailable("bf16", "cpu", ["avx512_bf16"]) is None
    assert recipes.unavailable("bf16", "cpu", ["amx_bf16"]) is None


def test_cpu_only_recipes_are_refused_on_cuda() -> None:
    reason = recipes.unavailable("dynamic_int8", "cuda:1", [])
    assert reason is not None and "cuda:1" in reason


def test_recipes_usable_on_this_cpu_are_not_refused() -> None:
    for name in EXACT + PRUNING + ["dynamic_int8", "static_int8", "compile"]:
        assert recipes.unavailable(name, "cpu", []) is None, name


def test_torchao_recipe_says_when_torchao_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an import that finds nothing sees
    assert recipes.unavailable("torchao_int8_compile", "cpu", []) == "torchao is not installed"


def test_every_catalog_recipe_has_a_builder() -> None:
    runtimes = {name for name, spec in RECIPES.items() if spec.runtime}  # built by transforms/runtimes.py
    assert set(recipes._STRUCTURES) == set(RECIPES) - runtimes and runtimes


def test_every_catalog_recipe_can_be_asked_whether_it_runs_here() -> None:
    for name in RECIPES:
        reason = recipes.unavailable(name, "cpu", ["avx512_bf16"])
        assert reason is None or isinstance(reason, str)


def test_an_unknown_recipe_is_a_key_error_that_lists_the_known_ones(mlp: nn.Module) -> None:
    with pytest.raises(KeyError, match="known: dynamic_int8"):
        recipes.build("int3", mlp, (torch.randn(2, 1024),), {}, None, {})
