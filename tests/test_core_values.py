"""The typed values findings and actions carry: their JSON form is the one the database and the CLI
always had, they come back from it equal, and a plugin that reads them as the dicts they once were
still gets its answers."""

from __future__ import annotations

import dataclasses
import json

import pytest

from monitor.core.actions import ActionRecord, CandidateNumbers, Fidelity, Verdict
from monitor.core.diagnosis import Diagnosis, GrownOp, OpTime
from monitor.core.series import FindingRecord, Level, SampleCheck, SeriesKey
from tests.storage_helpers import T0

GROWN = Diagnosis(
    total_us=812.5, families={"linear": 0.91, "other": 0.09}, top=[OpTime("aten::addmm", 700.0, 0.86)],
    summary="aten::addmm +85 %", reference_total_us=430.0, total_change=0.89,
    grown=[GrownOp("aten::addmm", "linear", 380.0, 700.0, 0.84, False, ["[32, 1024]"])], grew_most="linear",
    series="baseline/cpu/b32",
)
VERDICT = Verdict(
    CandidateNumbers(label="dynamic_int8", recipe="dynamic_int8", ratio_p50=0.4, ratio_ci95=(0.38, 0.42),
                     fidelity=Fidelity(kind="relative_error", value=0.01, rows=8)),
    accepted=False, reasons=["model grows"],
)


def finding(**fields: object) -> FindingRecord:
    base: dict[str, object] = dict(
        model="m", key=SeriesKey("baseline", "cpu", 32), metric="latency_ms_p50", change="up",
        verdict="regression", change_run_id=7, change_at=T0, before=Level(1.0, 0.98, 1.02, 20),
        after=Level(1.85, 1.8, 1.9, 6), rel_change=0.85, p_value=1e-9,
        samples=SampleCheck(interval=(0.8, 0.9), p_value=1e-6, confirmed=True), diagnosis=GROWN,
    )
    base.update(fields)
    return FindingRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [Level(1.0, 0.98, 1.02, 20), SampleCheck((0.8, 0.9), None, None), GROWN, VERDICT],
                         ids=lambda v: type(v).__name__)
def test_a_value_comes_back_equal_from_its_json(value):
    back = type(value).from_dict(json.loads(json.dumps(value.to_dict())))
    assert back == value


def test_the_json_form_leaves_out_what_is_not_set_as_the_old_dicts_did():
    assert Diagnosis(error="profile job timed out").to_dict() == {"families": {}, "top": [],
                                                                  "error": "profile job timed out"}
    assert "grown" not in Diagnosis(summary="busiest: aten::conv2d 80 %")
    assert VERDICT.to_dict()["speedup"] == 2.5 and VERDICT.to_dict()["fidelity"] == {
        "kind": "relative_error", "value": 0.01, "rows": 8}


def test_a_plugin_reading_the_old_dict_keys_gets_the_same_answers():
    f = finding()
    assert f.before["median"] == f.before.get("median") == 1.0 and f.after["runs"] == 6
    assert f.samples is not None and f.samples["interval"] == [0.8, 0.9] and f.samples.get("confirmed") is True
    assert f.diagnosis is not None and f.diagnosis["grown"][0]["op"] == "aten::addmm"
    assert f.diagnosis.get("summary", "-") == "aten::addmm +85 %" and f.diagnosis.get("note", "-") == "-"
    assert VERDICT["recipe"] == "dynamic_int8" and VERDICT["fidelity"]["value"] == 0.01 and not VERDICT["accepted"]
    with pytest.raises(KeyError):
        f.before["mean"]


def test_records_are_frozen_and_print_as_before():
    f = finding()
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.cause = "model"  # type: ignore[misc]
    data = json.loads(json.dumps(f.to_json()))
    assert data["before"] == {"median": 1.0, "low": 0.98, "high": 1.02, "runs": 20}
    assert data["samples"] == {"interval": [0.8, 0.9], "p_value": 1e-6, "confirmed": True}
    assert data["diagnosis"]["grown"][0]["new_shapes"] == ["[32, 1024]"] and data["variant"] == "baseline"
    action = ActionRecord(model="m", kind="requantize", trigger="cli", status="rejected", reason="why",
                          from_variant="baseline", candidates=[VERDICT], diagnosis=GROWN)
    printed = json.loads(json.dumps(action.to_json()))
    assert printed["candidates"] == [VERDICT.to_dict()] and printed["diagnosis"]["summary"] == "aten::addmm +85 %"
