"""The accept/reject rule and the diagnosis, on numbers: faster for real, as accurate, no bigger."""

from __future__ import annotations

import pytest

from monitor.config import OptimizeConfig
from monitor.core import catalog
from monitor.core.actions import CandidateNumbers, Fidelity
from monitor.optimize import diagnosis
from monitor.optimize.decision import best, judge

SETTINGS = OptimizeConfig()


def numbers(**fields: object) -> CandidateNumbers:
    base: dict[str, object] = dict(
        label="dynamic_int8", recipe="dynamic_int8", ratio_p50=0.4, ratio_ci95=[0.38, 0.42], p50_ms=0.4,
        current_p50_ms=1.0, size_mb=2.0, current_size_mb=8.0, fidelity={"kind": "top1", "agreement": 1.0},
    )
    base.update(fields)
    if isinstance(base["fidelity"], dict):
        base["fidelity"] = Fidelity.from_dict(base["fidelity"])
    return CandidateNumbers(**base)  # type: ignore[arg-type]


def test_a_faster_faithful_smaller_candidate_is_accepted() -> None:
    verdict = judge(numbers(), SETTINGS)
    assert verdict.accepted and verdict.reasons == []
    assert verdict.to_dict()["speedup"] == 2.5


def test_a_gain_under_the_margin_is_rejected_with_its_size() -> None:
    verdict = judge(numbers(ratio_p50=0.95, ratio_ci95=[0.93, 0.97]), SETTINGS)
    assert not verdict.accepted
    assert verdict.reasons == ["latency 1.05x, below the required 1.10x"]


def test_a_gain_whose_interval_includes_no_change_is_noise() -> None:
    verdict = judge(numbers(ratio_p50=0.85, ratio_ci95=[0.7, 1.02]), SETTINGS)
    assert not verdict.accepted and "not significant" in verdict.reasons[0]
    unproven = judge(numbers(ratio_p50=0.5, ratio_ci95=None), SETTINGS)  # one or two clean rounds
    assert not unproven.accepted and "too few interleaved rounds" in unproven.reasons[0]


def test_a_candidate_with_nan_or_inf_in_its_output_is_rejected() -> None:
    nan = {"kind": "relative_error", "value": None, "non_finite": True, "rows": 8}
    assert judge(numbers(fidelity=nan), SETTINGS).reasons == ["the output has NaN or infinite values"]


def test_accuracy_is_guarded_absolutely_when_eval_data_exists() -> None:
    ok = judge(numbers(accuracy=0.972, current_accuracy=0.978, fidelity=None), SETTINGS)
    assert ok.accepted
    bad = judge(numbers(accuracy=0.90, current_accuracy=0.978, fidelity=None), SETTINGS)
    assert not bad.accepted and "drop 0.0780 over the tolerance 0.01" in bad.reasons[0]


def test_without_eval_data_the_output_must_follow_the_current_variant() -> None:
    agreeing = judge(numbers(fidelity={"kind": "top1", "agreement": 0.995}), SETTINGS)
    assert agreeing.accepted
    split = judge(numbers(fidelity={"kind": "top1", "agreement": 0.9}), SETTINGS)
    assert not split.accepted and "0.1000 disagree" in split.reasons[0]
    drifting = judge(numbers(fidelity={"kind": "relative_error", "value": 0.3}), SETTINGS)
    assert not drifting.accepted and "relative error 0.3000" in drifting.reasons[0]
    assert not judge(numbers(fidelity=None), SETTINGS).accepted


def test_a_bigger_model_is_rejected_and_every_reason_is_kept() -> None:
    verdict = judge(numbers(size_mb=9.0, ratio_p50=1.2, ratio_ci95=[1.1, 1.3]), SETTINGS)
    assert not verdict.accepted and len(verdict.reasons) == 2
    assert "grows from 8.00 to 9.00 MiB" in verdict.reasons[1]


def test_a_candidate_that_failed_to_build_is_rejected_with_its_error() -> None:
    verdict = judge(numbers(error="Traceback...\nRuntimeError: cannot quantize"), SETTINGS)
    assert verdict.reasons == ["could not be built or measured: RuntimeError: cannot quantize"]


def test_the_fastest_accepted_candidate_wins() -> None:
    verdicts = [judge(numbers(label="a", ratio_p50=0.5, ratio_ci95=[0.45, 0.55]), SETTINGS),
                judge(numbers(label="b", ratio_p50=0.3, ratio_ci95=[0.28, 0.32]), SETTINGS),
                judge(numbers(label="c", ratio_p50=0.1, fidelity={"kind": "top1", "agreement": 0.5}), SETTINGS)]
    chosen = best(verdicts)
    assert chosen is not None and chosen.numbers.label == "b"
    assert best([verdicts[2]]) is None


def rows(**self_us: float) -> list[dict[str, object]]:
    return [{"op": op.replace("__", "::"), "shapes": "", "calls": 1.0, "self_us": us, "self_device_us": 0.0}
            for op, us in self_us.items()]


def test_the_diagnosis_names_the_operator_that_grew_and_its_new_shapes() -> None:
    reference = [{"op": "aten::addmm", "shapes": "[512] [32,512] [512,512]", "calls": 2.0, "self_us": 200.0},
                 {"op": "aten::relu", "shapes": "[32,512]", "calls": 1.0, "self_us": 20.0}]
    current = [{"op": "aten::addmm", "shapes": "[2048] [32,512] [512,2048]", "calls": 1.0, "self_us": 500.0},
               {"op": "aten::addmm", "shapes": "[512] [32,2048] [2048,512]", "calls": 1.0, "self_us": 450.0},
               {"op": "aten::relu", "shapes": "[32,2048]", "calls": 1.0, "self_us": 21.0}]
    found = diagnosis.compare(current, reference)
    (grown,) = found["grown"]  # relu's +1 us is noise
    assert grown["op"] == "aten::addmm" and grown["family"] == "linear"
    assert grown["change"] == 3.75 and "[2048] [32,512] [512,2048]" in grown["new_shapes"]
    assert found["grew_most"] == "linear"
    assert found["summary"].startswith("aten::addmm +375 % (new shapes")


@pytest.mark.parametrize(("op", "family"), [
    ("onnxruntime::Gemm", "linear"), ("onnxruntime::DynamicQuantizeMatMul", "linear"),
    ("onnxruntime::QLinearConv", "conv"), ("onnxruntime::MaxPool", "conv"), ("onnxruntime::Softmax", "attention"),
    ("aten::max_pool2d_with_indices", "conv"), ("onnxruntime::Relu", "other"),
])
def test_onnx_runtime_operators_fall_in_the_same_families_as_torch_ones(op: str, family: str) -> None:
    assert diagnosis.family(op) == family


def test_a_new_operator_is_reported_as_new() -> None:
    found = diagnosis.compare(rows(aten__addmm=100.0, aten__conv2d=80.0), rows(aten__addmm=100.0))
    assert [(g["op"], g["new"]) for g in found["grown"]] == [("aten::conv2d", True)]


def test_the_diagnosis_orders_recipes_by_where_the_time_goes() -> None:
    cpu = [s for s in catalog.CATALOG if s.action == "requantize" and "cpu" in s.devices]
    linear_heavy = diagnosis.compare(rows(aten__addmm=900.0, aten__relu=100.0), None)
    names = [s.name for s in diagnosis.order_recipes(cpu, linear_heavy)]
    assert names[0] in ("dynamic_int8", "static_int8", "torchao_int8_compile")
    assert "channels_last" not in names  # a conv-only recipe: no conv here
    conv_heavy = diagnosis.compare(rows(aten__mkldnn_convolution=700.0, aten__addmm=300.0), None)
    names = [s.name for s in diagnosis.order_recipes(cpu, conv_heavy)]
    assert names.index("static_int8") < names.index("dynamic_int8")
    assert names.index("static_int8") < names.index("channels_last")  # exact recipes after lossy ones that fit


def test_a_candidate_whose_calls_need_more_memory_is_rejected() -> None:
    assert judge(numbers(forward_peak_mb=10.5, current_forward_peak_mb=10.0), SETTINGS).accepted
    verdict = judge(numbers(forward_peak_mb=20.0, current_forward_peak_mb=10.0), SETTINGS)
    assert verdict.reasons == ["one call takes 20.0 MiB beyond the model, against 10.0 MiB"]
