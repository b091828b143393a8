"""Output fidelity of a candidate against the current variant, as the worker computes it."""

from __future__ import annotations

import json

import torch

from monitor.harness.candidates import fidelity


def test_a_classifier_is_judged_by_top1_agreement_and_anything_else_by_relative_error() -> None:
    logits = [torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.5], [0.2, 0.1]])]
    flipped = [torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.5], [0.2, 0.3]])]
    top1 = fidelity(logits, flipped, "auto")
    assert top1["kind"] == "top1" and top1["agreement"] == 0.75 and top1["rows"] == 4
    scores = [torch.tensor([1.0, 2.0, 3.0])]
    assert fidelity(scores, [torch.tensor([1.0, 2.0, 3.3])], "auto")["kind"] == "relative_error"
    # One column has no arg-max: even when top-1 is asked for, agreement would always be 1.
    forced = fidelity([torch.ones(4, 1)], [torch.zeros(4, 1)], "top1")
    assert forced["kind"] == "relative_error" and forced["value"] == 1.0


def test_nan_or_inf_in_a_candidates_output_is_flagged_and_stays_valid_json() -> None:
    current = [torch.ones(2, 3)]
    for bad in (float("nan"), float("inf")):
        found = fidelity(current, [torch.tensor([[1.0, bad, 1.0], [1.0, 1.0, 1.0]])], "auto")
        assert found["non_finite"] is True and found["agreement"] is None
        json.dumps(found, allow_nan=False)  # what the database's JSON columns accept
        found = fidelity(current, [torch.tensor([[1.0, bad, 1.0], [1.0, 1.0, 1.0]])], "relative_error")
        assert found["non_finite"] is True and found["value"] is None
